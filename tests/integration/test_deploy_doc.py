"""docs/deploy.md, run: every `sh on=NAME` block on that machine, in the page's order, exactly
as written, on simulated machines (tests/machines.py); then what the page promises is checked,
down to "nothing left behind" after its uninstall."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.machines import build

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deploy.md"
FENCE = re.compile(r"^```(?P<lang>\w*)(?: (?P<info>[^\n]*))?\n(?P<body>.*?)^```$", re.M | re.S)
MACHINES = {"etcd": "192.168.70.10", "node1": "192.168.70.11", "node2": "192.168.70.12"}
# Commands that need a service manager or an API server: the only ones the test cannot run.
NOT_HERE = ("systemctl ", "kubeadm ", "kubectl ")


def blocks() -> Iterator[tuple[str, str]]:
    """(where, commands) of each shell block: `on=NAME` or `not-here`."""
    for m in FENCE.finditer(DOC.read_text()):
        if m["lang"] in ("sh", "bash", "shell", "console"):
            info = m["info"] or ""
            assert info.startswith("on=") or info == "not-here", f"a block that no test runs: " \
                f"{m['body'][:60]!r}"
            yield info, m["body"]


def test_blocks_that_cannot_run_here_hold_nothing_else() -> None:
    kept = [body for where, body in blocks() if where == "not-here"]
    assert kept
    for body in kept:
        for line in body.splitlines():
            assert line.startswith(NOT_HERE), line


def test_every_command_of_the_deploy_doc_runs(make_ns: Callable[[str], str],
                                              tmp_path: Path) -> None:
    make = subprocess.run(["make", "wheel"], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert make.returncode == 0, make.stderr
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dist" / "podnet-0.1.0-py3-none-any.whl", home)
    # podnet's dependencies, so that the nodes' `pip install` needs no index.
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels),
                    str(ROOT)], check=True, capture_output=True)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": str(home), "LANG": "C.UTF-8", "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(wheels), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    machines = build(make_ns, tmp_path, MACHINES)
    ran = 0
    for where, body in blocks():
        if where == "not-here":
            continue
        machine = machines[where.removeprefix("on=")]
        done = machine.run(body, str(home), env)
        assert done.returncode == 0, f"on {machine.name}:\n{body}\n{done.stdout}\n{done.stderr}"
        ran += 1
    assert ran >= 10
    # Uninstalled on node1: nothing of podnet's is left there, and its peers forgot it.
    node1 = machines["node1"]

    def on_node1(command: str) -> str:
        out = node1.run(command, str(home), env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    links = [name.split("@")[0] for name in on_node1(
        "ip -o link | awk -F': ' '{print $2}'").split()]
    assert sorted(links) == ["eth0", "lo"]
    assert on_node1("nft list ruleset").strip() == ""
    assert "proto 88" not in on_node1("ip route")
    assert on_node1("ls /opt/cni/bin /run/podnet").split() == ["/opt/cni/bin:", "/run/podnet:"]
    assert "10-podnet.conflist" not in on_node1("ls /etc/cni/net.d")
    shown = machines["node2"].run("podnet cluster show --etcd http://192.168.70.10:2379 --json",
                                  str(home), env)
    assert [lease["node"] for lease in json.loads(shown.stdout)["leases"]] == ["node2"]
