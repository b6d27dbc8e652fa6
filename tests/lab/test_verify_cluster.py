"""`podnet verify --etcd`: a cluster verified through its datastore by its own agents, as one
no lab built would be; the lab is only where the cluster runs."""

from __future__ import annotations

import os
import signal
import subprocess

from podnet.lab.lab import ns_path, status
from tests.lab.conftest import PODNET, MakeLab, verify_etcd, wait_published


def test_agents_verify_their_cluster(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=2)
    wait_published(lab)
    code, report, err = verify_etcd(lab)
    assert code == 0 and report is not None and report["ok"], (err, report)
    pods = [f"default/{p.name}" for p in lab.topo.pods]
    # 4 pods: 12 pod->pod, 8 node->pod and 8 pod->node pairs, each with the sender's own address
    assert len(report["pairs"]) == 28
    assert {p["src"] for p in report["pairs"]} == set(pods) | {"node1", "node2"}
    assert all(p["seen_source"] and not p["nat"] for p in report["pairs"])
    assert set(report["own_address"]) == set(pods) and len(report["mtu"]) == 2


def test_names_what_is_broken(make_lab: MakeLab) -> None:
    """A node's missing route, a pod whose namespace vanished without a DEL, a node whose agent
    does not answer: each named, exit 1."""
    lab = make_lab("vxlan", nodes=3, pods=1, reconcile=300.0)
    node2_subnet = next(n["pod_subnet"] for n in status(lab)["nodes"] if n["name"] == "node2")
    subprocess.run(["nsenter", f"--net={ns_path(lab.topo.node('node1').netns(lab.topo.name))}",
                    "ip", "route", "del", node2_subnet], check=True)
    gone = next(p for p in lab.topo.pods if p.node == "node3")
    subprocess.run(["ip", "netns", "del", gone.netns(lab.topo.name)], check=True)
    wait_published(lab)
    code, report, err = verify_etcd(lab)
    assert code == 1 and report is not None and not report["ok"], err
    broken = [p for p in report["pairs"] if not p["ok"]]
    # node1 neither sends to node2's pod nor answers it; everything else connects.
    assert {(p["src"], p["dst"]) for p in broken} == {("node1", "default/node2-p1"),
                                                      ("default/node2-p1", "node1")}, broken
    assert any(f"node node1 lacks a route to {node2_subnet} (node2's pods)" in w
               for p in broken for w in p["why"])
    assert any(f"default/{gone.name}: its network namespace" in p and "is gone" in p
               for p in report["problems"]), report["problems"]

    node2 = lab.topo.node("node2")
    os.kill(node2.agent_pid, signal.SIGSTOP)
    try:
        code, report, err = verify_etcd(lab, "--timeout", "6")
    finally:
        os.kill(node2.agent_pid, signal.SIGCONT)
    assert code == 1 and report is not None
    assert any(p.startswith("node node2: its agent did not answer") for p in report["problems"])
    assert not any(p["src"] == "node2" or p["dst"] == "node2" for p in report["pairs"])


def test_unreachable_etcd_is_named() -> None:
    proc = subprocess.run([*PODNET, "verify", "--etcd", "http://127.0.0.1:1"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("podnet verify: etcd unreachable"), proc.stderr
