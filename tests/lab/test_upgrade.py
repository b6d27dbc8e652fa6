"""An upgrade under traffic: every node runs the previous release's agent (the commit this work
started from, its source extracted from git), then each is replaced by this one in turn while
a pod pings a pod of another node every 10 ms: no packet is lost, and the cluster verifies."""

from __future__ import annotations

import re
import signal
import subprocess
import time
import tomllib
import uuid
from importlib import metadata
from pathlib import Path

import pytest

from podnet.lab.lab import Lab, down
from podnet.lab.topology import Topology
from tests.lab.conftest import failures, verify

PREVIOUS = "0b37424"  # the release before the operator-safety and deployment work
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def previous_release(tmp_path: Path) -> str:
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS}^{{commit}}"],
                           capture_output=True, check=False)
    if known.returncode != 0:
        pytest.skip(f"this clone lacks {PREVIOUS}")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS, "src", "pyproject.toml"],
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True)
    # Its agent runs on this environment's packages: a dependency it has and this release
    # dropped must still be installed (the dev extra), or its agent dies at import.
    project = tomllib.loads((tmp_path / "pyproject.toml").read_text())["project"]
    missing = [req for req in project["dependencies"] if not _installed(req)]
    assert not missing, f"{PREVIOUS} needs {missing}: add them to the dev extra"
    return str(tmp_path / "src")


def _installed(requirement: str) -> bool:
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_agents_upgraded_one_by_one_lose_no_packet(previous_release: str) -> None:
    name = f"t{uuid.uuid4().hex[:6]}"
    topo = Topology.make(name, "vxlan", 2, 1)
    for node in topo.nodes:
        node.agent_src = previous_release
    lab = Lab(topo)
    try:
        lab.up()
        src, dst = lab.topo.pods
        for node in lab.topo.nodes:
            assert f"PYTHONPATH={previous_release}".encode() in _environ(node.agent_pid)
        ping = subprocess.Popen(["nsenter", f"--net={lab.target_netns(src.name)}", "ping",
                                 "-i", "0.01", "-q", dst.ip], stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        for node in lab.topo.nodes:
            lab.upgrade_agent(node.name, "")  # this release
        time.sleep(1)
        ping.send_signal(signal.SIGINT)
        out, _ = ping.communicate(timeout=30)
        assert " 0% packet loss" in out, out
        for node in lab.topo.nodes:
            assert b"PYTHONPATH=" not in _environ(node.agent_pid)  # this release's agent
        report = verify(lab)
        assert report.ok, failures(report)
    finally:
        down(name)


def _environ(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        return fh.read()
