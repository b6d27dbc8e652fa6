"""Faults and hostile input in the lab: nothing lost, no one let in (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from podnet.lab.lab import Lab, ns_path
from podnet.netlink import links, netns
from tests.conftest import healthz
from tests.lab.conftest import MakeLab, failures, verify
from tests.lab.test_agent import etcdctl
from tests.lab.test_lab_ops import sh, subnet_of, wait_for


def pod_ns(lab: Lab, index: int) -> str:
    return ns_path(lab.topo.pods[index].netns(lab.topo.name))


def test_agent_restart_loses_no_packet(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    src, dst_ip = pod_ns(lab, 0), lab.topo.pods[1].ip
    server = subprocess.Popen(["nsenter", f"--net={pod_ns(lab, 1)}", "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    ping = subprocess.Popen(["nsenter", f"--net={src}", "ping", "-i", "0.01", "-c", "500",
                             "-q", dst_ip], stdout=subprocess.PIPE, text=True)
    stream = subprocess.Popen(["nsenter", f"--net={src}", "iperf3", "-c", dst_ip, "-t", "7",
                               "-b", "100M", "-J"], stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    lab.restart_agent("node1")
    lab.restart_agent("node2")
    out, _ = ping.communicate(timeout=30)
    result, _ = stream.communicate(timeout=30)
    server.wait(10)
    assert " 0% packet loss" in out, out
    assert stream.returncode == 0
    assert json.loads(result)["end"]["sum_received"]["bytes"] > 0


def test_etcd_outage_loses_no_packet(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    ping = subprocess.Popen(["nsenter", f"--net={pod_ns(lab, 0)}", "ping", "-i", "0.05", "-c",
                             "700", "-q", lab.topo.pods[1].ip], stdout=subprocess.PIPE, text=True)
    routes = {n: sh(lab, n, "ip", "route") for n in ("node1", "node2")}
    time.sleep(0.5)
    lab.stop_etcd()
    for _ in range(6):
        time.sleep(5)
        for n in ("node1", "node2"):
            assert sh(lab, n, "ip", "route") == routes[n]  # the data plane stays as it is
        assert all(os.path.exists(f"/proc/{n.agent_pid}") for n in lab.topo.nodes)
    # Unreachable for longer than the lease TTL (15 s in a lab): /healthz says so.
    code, body = healthz(lab.target_netns("node1"))
    assert code == 503 and "the datastore has been unreachable for" in body, body
    lab.start_etcd()
    out, _ = ping.communicate(timeout=60)
    assert " 0% packet loss" in out, out
    node = lab.add_node()  # the agents converge on what happened meanwhile
    for peer in ("node1", "node2"):
        assert wait_for(lambda p=peer: subnet_of(lab, node.name) in sh(lab, p, "ip", "route"),
                        15.0)
    assert wait_for(lambda: healthz(lab.target_netns("node1")) == (200, "ok\n"), 15.0)


def test_plugin_killed_mid_add_leaks_nothing(make_lab: MakeLab, make_ns: Callable[[str], str],
                                            tmp_path: Any) -> None:
    lab = make_lab("vxlan", nodes=1, pods=0)
    node = lab.topo.nodes[0]
    conflist = lab.conflist(node)
    conf = {**conflist["plugins"][0], "name": conflist["name"], "cniVersion": "1.0.0"}
    conf.pop("socket")  # in-process: the plugin process itself does the work we interrupt
    rt = lab.runtime(node)
    data_dir = conf["ipam"]["dataDir"] = str(tmp_path / "ipam")
    pods = [make_ns(f"kill{i}") for i in range(6)]
    rng = random.Random(7)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "ADD",
           "CNI_PATH": ":".join(rt.path), "CNI_IFNAME": "eth0"}
    for i, pod in enumerate(pods):
        proc = subprocess.Popen(["nsenter", f"--net={ns_path(node.netns(lab.topo.name))}",
                                 rt.find("podnet")], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL,
                                env={**env, "CNI_CONTAINERID": f"k{i}", "CNI_NETNS": pod})
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(conf).encode())
        proc.stdin.close()
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # What a runtime does after a failed ADD: DEL, then ADD again.
        assert rt.exec("podnet", "DEL", conf, f"k{i}", pod).code == 0
        out = rt.exec("podnet", "ADD", conf, f"k{i}", pod)
        assert out.code == 0, out.stdout
    held = [f for f in os.listdir(os.path.join(data_dir, conf["name"])) if f[0].isdigit()]
    assert len(held) == len(set(held)) == len(pods)
    gc = {**conf, "cniVersion": "1.1.0", "cni.dev/valid-attachments": []}
    assert rt.exec("podnet", "GC", gc).code == 0
    for i, pod in enumerate(pods):
        assert rt.exec("podnet", "DEL", conf, f"k{i}", pod).code == 0
    assert not [f for f in os.listdir(os.path.join(data_dir, conf["name"])) if f[0].isdigit()]
    assert not [n for n in sh(lab, "node1", "ip", "-br", "link").split() if n.startswith("veth")]


def test_drift_is_repaired(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1, reconcile=1.0)
    peer = subnet_of(lab, "node2")
    gw = peer.split("/")[0]
    node2_ip = lab.topo.node_ip(lab.topo.node("node2"))
    sh(lab, "node1", "ip", "neigh", "del", gw, "dev", "podnet.1")
    mac = json.loads(etcdctl(lab, "get", "--print-value-only", "/podnet/subnets/"
                             + peer.replace("/", "-")))["attrs"]["vtepMAC"]
    sh(lab, "node1", "bridge", "fdb", "del", mac, "dev", "podnet.1", "dst", node2_ip)
    assert wait_for(lambda: gw in sh(lab, "node1", "ip", "neigh", "show", "dev", "podnet.1")
                    and node2_ip in sh(lab, "node1", "bridge", "fdb", "show", "dev",
                                       "podnet.1"), 3.0)
    sh(lab, "node2", "ip", "link", "del", "podnet.1")
    assert wait_for(lambda: "onlink" in sh(lab, "node2", "ip", "route"), 3.0)
    report = verify(lab)
    assert report.ok, failures(report)


def test_node_gone_while_its_pods_remain(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=3, pods=1)
    gone = subnet_of(lab, "node3")
    node3 = lab.topo.node("node3")
    os.kill(node3.agent_pid, signal.SIGKILL)  # its pods stay; its lease runs out
    lease_id = json.loads(etcdctl(lab, "get", "--print-value-only", "/podnet/nodes/node3"))[
        "leaseID"]
    etcdctl(lab, "lease", "revoke", format(lease_id, "x"))
    for peer in ("node1", "node2"):
        assert wait_for(lambda p=peer: gone not in sh(lab, p, "ip", "route"), 3.0)
    lab.topo.nodes.remove(node3)
    lab.topo.pods = [p for p in lab.topo.pods if p.node != "node3"]
    report = verify(lab)  # the rest of the cluster is untouched
    assert report.ok, failures(report)


MARK = b"podnet-spoof-tst"


class Receiver:
    """Counts the marked ICMP echoes that reach a pod (other traffic, IPv6 neighbour discovery
    on a fresh bridge say, is not counted)."""

    def __init__(self, ns: str) -> None:
        with netns.entered(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.setblocking(False)

    def count(self) -> int:
        time.sleep(0.4)
        seen = 0
        while True:
            try:
                data = self.sock.recv(2048)
            except BlockingIOError:
                return seen
            seen += MARK in data and data[20] == 8  # an echo request carrying the mark

    def close(self) -> None:
        self.sock.close()


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def _ip_icmp(src: str, dst: str) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + MARK
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0x4000, 64, 1, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + icmp


def _mac(text: str) -> bytes:
    return bytes(int(b, 16) for b in text.split(":"))


def _link_mac(ns: str, ifname: str) -> str:
    ipr = netns.iproute_in(ns)
    try:
        msg = links.by_name(ipr, ifname)
        assert msg is not None
        return links.mac_of(msg)
    finally:
        ipr.close()


def test_vxlan_port_only_from_nodes(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    target = pod_ns(lab, 0)
    pod_ip = lab.topo.pods[0].ip
    vtep = _link_mac(lab.target_netns("node1"), "podnet.1")
    node2_subnet_ip = subnet_of(lab, "node2").split("/")[0][:-1] + "9"
    inner = (_mac(vtep) + _mac("0a:00:00:00:00:99") + b"\x08\x00"
             + _ip_icmp(node2_subnet_ip, pod_ip))
    packet = struct.pack("!II", 0x08000000, 1 << 8) + inner  # VXLAN header, VNI 1
    node1_ip = lab.topo.node_ip(lab.topo.node("node1"))

    receiver = Receiver(target)

    def send_from(ns: str) -> int:
        receiver.count()  # drain
        with netns.entered(ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            for _ in range(5):
                sock.sendto(packet, (node1_ip, 8472))
        return receiver.count()

    try:
        assert send_from(lab.target_netns("cp")) == 0  # not a node: dropped before the tunnel
        rules = sh(lab, "node1", "nft", "list", "chain", "ip", "podnet", "input")
        assert "packets 5" in rules
        assert send_from(lab.target_netns("node2")) == 5  # a node: decapsulated, delivered
    finally:
        receiver.close()


@pytest.mark.parametrize("where", ["same node", "other node"])
def test_pod_cannot_spoof_its_source(make_lab: MakeLab, where: str) -> None:
    # Towards another node the frame meets the eBPF fast path first: it must pass a spoofed
    # frame on to the bridge's rules rather than send it.
    lab = make_lab("vxlan", nodes=1 if where == "same node" else 2, pods=2)
    src, own_ip, other_ip = pod_ns(lab, 0), lab.topo.pods[0].ip, lab.topo.pods[1].ip
    target = 1 if where == "same node" else 2
    dst, dst_ip = pod_ns(lab, target), lab.topo.pods[target].ip
    own_mac = _link_mac(src, "eth0")
    # The next hop's MAC: the pod itself on the same bridge, else the node's bridge (gateway).
    next_hop = (_link_mac(dst, "eth0") if where == "same node"
                else _link_mac(lab.target_netns("node1"), "kube-bridge"))
    with netns.entered(src):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind(("eth0", 0))

    receiver = Receiver(dst)

    def frames(src_mac: str, src_ip: str) -> int:
        receiver.count()  # drain
        for _ in range(5):
            sock.send(_mac(next_hop) + _mac(src_mac) + b"\x08\x00" + _ip_icmp(src_ip, dst_ip))
        return receiver.count()

    with sock:
        assert frames(own_mac, own_ip) == 5  # its own addresses pass
        spoofed_ip = dst_ip.rsplit(".", 1)[0] + ".200"
        assert frames(own_mac, spoofed_ip) == 0  # another source address: dropped
        if where == "other node":
            assert frames(own_mac, other_ip) == 0  # a neighbour pod's address: dropped
        assert frames("0a:bb:cc:dd:ee:ff", own_ip) == 0  # another MAC: dropped
    receiver.close()


def test_agent_files_are_root_only(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=1, pods=0)
    d = lab.node_dir(lab.topo.nodes[0])
    assert os.stat(os.path.join(d, "state")).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(d, "state", "node1.json")).st_mode & 0o777 == 0o600
    assert os.stat(os.path.join(d, "cni.sock")).st_mode & 0o077 == 0  # wires pods: root only
    assert os.stat(os.path.join(d, "net.d", "10-podnet.conflist")).st_mode & 0o777 == 0o644

