"""What every backend promises beyond connectivity: masquerade only leaving the cluster, pod
traffic forwarded despite a FORWARD DROP policy, a backend change cleaning up, GRE refused."""

from __future__ import annotations

import subprocess
import sys
import time

from pyroute2.ethtool import Ethtool

from podnet.lab.lab import Lab, ns_path
from podnet.netlink import netns
from podnet.verify import probes
from tests.lab.conftest import MakeLab, failures, fast_path_at, verify
from tests.lab.test_lab_ops import sh


def test_masquerade_only_leaving_the_cluster(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    outside = probes.EchoServer(lab.target_netns("cp"))  # etcd's host: not a node, not a pod
    try:
        pod = lab.topo.pods[0]
        node = lab.topo.node(pod.node)
        seen = probes.tcp_seen_source(ns_path(pod.netns(lab.topo.name)), lab.topo.etcd_ip)
        assert seen == lab.topo.node_ip(node)  # masqueraded to its node
    finally:
        outside.close()
    report = verify(lab)  # and never inside the cluster
    assert report.ok and not any(p.nat for p in report.pairs), failures(report)


def test_forward_drop_policy_of_other_software(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1, reconcile=1.0)
    for node in ("node1", "node2"):
        sh(lab, node, "iptables", "-P", "FORWARD", "DROP")
    time.sleep(2.5)  # a reconcile run puts podnet's accept rules on top
    rules = sh(lab, "node1", "iptables", "-S", "FORWARD")
    assert "-P FORWARD DROP" in rules and "podnet: allow pod traffic" in rules
    report = verify(lab)
    assert report.ok, failures(report)


def _offload(lab: Lab, node: str) -> bool:
    with netns.entered(lab.target_netns(node)):
        tool = Ethtool()
    try:
        return bool(tool.get_features("podnet.1").features["tx-checksum-ip-generic"].enable)
    finally:
        tool.close()


def test_vxlan_tx_checksum_offload_follows_the_option(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=1, pods=0)
    assert _offload(lab, "node1") is True  # auto, on this kernel (>= 5.7)
    _reinit(lab, "vxlan", "--vxlan-tx-checksum-offload", "off")
    lab.restart_agent("node1")
    assert _offload(lab, "node1") is False
    # Nor does the fast path encapsulate: its packets would meet what the switch avoids.
    with fast_path_at(lab, "node1") as (_, _, fast):
        assert fast is not None and fast.tunnels == {}


def _reinit(lab: Lab, backend: str, *extra: str) -> None:
    subprocess.run(["nsenter", f"--net={lab.target_netns('cp')}", sys.executable, "-m", "podnet",
                    "cluster", "init", "--etcd", lab.topo.etcd_url, "--cidr", lab.topo.cidr,
                    "--backend", backend, *extra], check=True, capture_output=True)


def test_backend_change_removes_the_old_one(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=0)
    _reinit(lab, "host-gw")
    for node in ("node1", "node2"):
        lab.restart_agent(node)
    time.sleep(1.0)
    for node in ("node1", "node2"):
        links = sh(lab, node, "ip", "-br", "link")
        assert "podnet.1" not in links
        assert "onlink" not in sh(lab, node, "ip", "route")
    lab.topo.backend = "host-gw"
    for node in ("node1", "node2"):
        lab.add_pod(node)
    report = verify(lab)
    assert report.ok, failures(report)
    assert "via 192.168.100.12 dev eth0 proto 88" in sh(lab, "node1", "ip", "route")


def test_gre_is_refused_with_the_reason(make_lab: MakeLab, tmp_path: object) -> None:
    lab = make_lab("vxlan", nodes=1, pods=0)
    _reinit(lab, "gre")
    lab.stop_agent("node1")  # one agent per host: this one tries the gre backend
    proc = subprocess.run(
        ["nsenter", f"--net={lab.target_netns('node1')}", sys.executable, "-m", "podnet",
         "agent", "--etcd", lab.topo.etcd_url, "--node-name", "gre1", "--iface", "eth0",
         "--cni-conf-dir", f"{tmp_path}/net.d", "--state-dir", f"{tmp_path}/state",
         "--cni-socket", f"{tmp_path}/cni.sock", "--metrics", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "ip_gre" in proc.stderr and "use the vxlan backend" in proc.stderr
