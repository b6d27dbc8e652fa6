"""The lab changing under a running cluster, and verify naming what is broken."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from podnet.lab.lab import Lab, ns_path, status
from tests.lab.conftest import MakeLab, failures, verify


def sh(lab: Lab, target: str, *argv: str) -> str:
    return subprocess.run(["nsenter", f"--net={lab.target_netns(target)}", *argv],
                          capture_output=True, text=True, check=True).stdout


def subnet_of(lab: Lab, node: str) -> str:
    return next(n["pod_subnet"] for n in status(lab)["nodes"] if n["name"] == node)


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_deleted_route_is_named_then_repaired(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1, reconcile=2.0)
    node1 = lab.topo.node("node1")
    target = subnet_of(lab, "node2")
    os.kill(node1.agent_pid, signal.SIGSTOP)  # hold the repair back while verify looks
    try:
        sh(lab, "node1", "ip", "route", "del", target)
        report = verify(lab)
        assert not report.ok
        text = " ".join(failures(report))
        assert f"node node1 lacks a route to {target} (node2's pods)" in text
    finally:
        os.kill(node1.agent_pid, signal.SIGCONT)
    assert wait_for(lambda: target in sh(lab, "node1", "ip", "route"), 2.0 + 3)
    assert verify(lab).ok


def test_add_and_remove_node(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    node = lab.add_node()
    lab.add_pod(node.name)
    new_subnet = subnet_of(lab, node.name)
    for peer in ("node1", "node2"):
        assert new_subnet in sh(lab, peer, "ip", "route")
    report = verify(lab)
    assert report.ok, failures(report)
    gone = subnet_of(lab, "node2")
    lab.remove_node("node2")
    for peer in ("node1", node.name):
        assert wait_for(lambda p=peer: gone not in sh(lab, p, "ip", "route"), 3.0)
        assert "192.168.100.12" not in sh(lab, peer, "bridge", "fdb", "show", "dev", "podnet.1")
    report = verify(lab)
    assert report.ok, failures(report)


def test_two_labs_coexist(make_lab: MakeLab) -> None:
    a = make_lab("vxlan", nodes=2, pods=1)
    b = make_lab("host-gw", nodes=2, pods=1)
    assert {os.path.basename(p["netns"]) for p in status(a)["pods"]}.isdisjoint(
        {os.path.basename(p["netns"]) for p in status(b)["pods"]})
    assert verify(a).ok and verify(b).ok


def test_restarted_agent_keeps_subnet_and_data_plane(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    before = subnet_of(lab, "node1")
    routes = sh(lab, "node2", "ip", "route")
    lab.restart_agent("node1")
    assert subnet_of(lab, "node1") == before
    assert sh(lab, "node2", "ip", "route") == routes
    assert os.path.exists(ns_path(lab.topo.node("node1").netns(lab.topo.name)))
    report = verify(lab)
    assert report.ok, failures(report)
