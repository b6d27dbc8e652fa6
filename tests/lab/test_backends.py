"""Each backend in the lab: every pair connects without NAT, and down leaves nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from podnet.lab.lab import ns_path
from tests.lab.conftest import MakeLab, failures, verify


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_backend_connects_every_pair(make_lab: MakeLab, backend: str) -> None:
    lab = make_lab(backend)
    report = verify(lab)
    assert report.ok, failures(report)
    assert len(report.pairs) == 6 * 5 + 2 * 3 * 6
    assert all(p.seen_source for p in report.pairs)


def test_vxlan_mtu_and_device(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    conf = lab.conflist(lab.topo.nodes[0])
    assert conf["plugins"][0]["mtu"] == 1450  # underlay 1500 - 50
    out = subprocess.run(["nsenter", f"--net={ns_path(lab.topo.nodes[0].netns(lab.topo.name))}",
                          "ip", "-d", "link", "show", "podnet.1"], capture_output=True,
                         text=True, check=True).stdout
    assert "vxlan id 1" in out and "dstport 8472" in out and "nolearning" in out


def test_status_json_keys(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    out = subprocess.run([sys.executable, "-m", "podnet", "lab", "status", "--name",
                          lab.topo.name, "--json"], capture_output=True, text=True, check=True)
    st = json.loads(out.stdout)
    assert set(st) >= {"name", "backend", "nodes", "pods"}
    assert set(st["nodes"][0]) >= {"name", "netns", "node_ip", "pod_subnet", "agent_pid"}
    assert set(st["pods"][0]) == {"name", "netns", "ip", "node"}
    assert all(os.path.exists(f"/proc/{n['agent_pid']}") for n in st["nodes"])
