"""A real etcd cluster in the lab (three members, each in its namespace) losing its leader,
then a follower, during pod churn and a node join: pods keep talking (no packet lost at 100
per second), no subnet is leased twice, no lease is lost, and the join is learned by every
peer. The agents are given every member."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from podnet.lab.lab import Lab
from tests.lab.conftest import MakeLab, failures, verify
from tests.lab.test_agent import etcdctl
from tests.lab.test_lab_ops import sh, subnet_of, wait_for


def leader(lab: Lab) -> str:
    """The member that leads now (asked of every member that runs)."""
    running = [m for m in lab.topo.etcd_names if lab.topo.etcd_pids.get(m)]
    urls = ",".join(lab.topo.etcd_member_url(m) for m in running)
    for _ in range(50):
        out = etcdctl(lab, "endpoint", "status", "--endpoints", urls, "-w", "json")
        status = {s["Endpoint"]: s["Status"] for s in json.loads(out)}
        for member in running:
            st = status.get(lab.topo.etcd_member_url(member))
            if st and st["leader"] == st["header"]["member_id"]:
                return member
        time.sleep(0.2)  # electing
    raise AssertionError("no etcd leader")


def healthy(lab: Lab, member: str) -> bool:
    proc = subprocess.run(["nsenter", f"--net={lab.target_netns('cp2')}", "etcdctl",
                           "--endpoints", lab.topo.etcd_member_url(member), "endpoint",
                           "health"], capture_output=True, check=False)
    return proc.returncode == 0


def test_the_leader_then_a_follower_killed_during_churn_and_a_join(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1, etcd_members=3)
    src, dst = lab.topo.pods
    ping = subprocess.Popen(["nsenter", f"--net={lab.target_netns(src.name)}", "ping", "-i",
                             "0.01", "-q", dst.ip], stdout=subprocess.PIPE, text=True)
    first = leader(lab)
    lab.kill_etcd_member(first)
    churn = [lab.add_pod("node1"), lab.add_pod("node2")]
    lab.remove_pod(churn.pop())
    joined = lab.add_node()  # a join while the leader is gone
    lab.add_pod(joined.name)
    lab.start_etcd_member(first)  # its supervisor starts it again
    assert wait_for(lambda: healthy(lab, first), 30.0)
    follower = next(m for m in lab.topo.etcd_names if m != leader(lab))
    lab.kill_etcd_member(follower)
    lab.add_pod(joined.name)
    lab.remove_pod(churn.pop())
    lab.start_etcd_member(follower)
    assert wait_for(lambda: healthy(lab, follower), 30.0)
    time.sleep(1)
    ping.send_signal(signal.SIGINT)
    out, _ = ping.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    # No subnet leased twice, no lease lost: one per node, each node's own.
    leases = [json.loads(v) for v in etcdctl(lab, "get", "--print-value-only", "--prefix",
                                               "/podnet/subnets/").split("\n") if v.strip()]
    assert sorted(lease["node"] for lease in leases) == ["node1", "node2", "node3"]
    assert len({lease["subnet"] for lease in leases}) == 3
    for peer in ("node1", "node2"):
        assert wait_for(lambda p=peer: subnet_of(lab, joined.name) in sh(lab, p, "ip", "route"),
                        10.0)
    report = verify(lab)
    assert report.ok, failures(report)


def test_quorum_lost_for_30_s_leaves_the_data_plane_and_agents_converge(
        make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1, etcd_members=3)
    src, dst = lab.topo.pods
    routes = {n: sh(lab, n, "ip", "route") for n in ("node1", "node2")}
    ping = subprocess.Popen(["nsenter", f"--net={lab.target_netns(src.name)}", "ping", "-i",
                             "0.05", "-q", dst.ip], stdout=subprocess.PIPE, text=True)
    lost = lab.topo.etcd_names[1:]  # two of three: no quorum
    for member in lost:
        lab.kill_etcd_member(member)
    for _ in range(6):
        time.sleep(5)
        for n in ("node1", "node2"):
            assert sh(lab, n, "ip", "route") == routes[n]  # the data plane stays as it is
        assert all(os.path.exists(f"/proc/{n.agent_pid}") for n in lab.topo.nodes)
    for member in lost:
        lab.start_etcd_member(member)
    for member in lost:
        assert wait_for(lambda m=member: healthy(lab, m), 30.0)
    ping.send_signal(signal.SIGINT)
    out, _ = ping.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    joined = lab.add_node()  # the agents converge on the cluster as it is now
    for peer in ("node1", "node2"):
        assert wait_for(lambda p=peer: subnet_of(lab, joined.name) in sh(lab, p, "ip", "route"),
                        15.0)
