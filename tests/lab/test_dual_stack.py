"""Dual-stack clusters over the IPv4 and the IPv6 underlay: every pod has an address of each
family, and every ordered pair connects without NAT in both, on l2, host-gw and vxlan, with the
fast path."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import time

import pytest

from podnet.lab.lab import Lab, ns_path, status
from podnet.netlink import links, netns, tc
from tests.lab.conftest import (
    PODNET,
    MakeLab,
    failures,
    verify,
    verify_etcd,
    wait_published,
)


def sh(lab: Lab, node: str, *argv: str) -> str:
    path = ns_path(lab.topo.node(node).netns(lab.topo.name))
    return subprocess.run(["nsenter", f"--net={path}", *argv], capture_output=True, text=True,
                          check=True).stdout


def subnets(lab: Lab, node: str) -> list[str]:
    return next(n["pod_subnets"] for n in status(lab)["nodes"] if n["name"] == node)


@pytest.mark.parametrize("backend", ["host-gw", "vxlan"])
def test_every_pair_connects_in_both_families(make_lab: MakeLab, backend: str) -> None:
    lab = make_lab(backend, nodes=2, pods=2, ip_family="dual")
    for pod in lab.topo.pods:
        v4, v6 = pod.ips
        assert ipaddress.ip_address(v4) in ipaddress.ip_network("10.244.0.0/16")
        assert ipaddress.ip_address(v6) in ipaddress.ip_network("fd00:10:244::/56")
    node2_v4, node2_v6 = subnets(lab, "node2")
    index = ipaddress.ip_network(node2_v4).network_address.packed[2]  # the i-th /24 ...
    assert node2_v6 == f"fd00:10:244:{index:x}::/64"  # ... goes with the i-th /64
    routes6 = sh(lab, "node1", "ip", "-6", "route", "show", "proto", "88")
    neigh6 = sh(lab, "node1", "ip", "-6", "neigh", "show", "nud", "permanent")
    gw = node2_v6.split("/")[0]
    # IPv6 pods need no IPv6 underlay: host-gw resolves the next hop to the peer's node MAC
    # on eth0, vxlan to its VTEP MAC on the one device that carries both families.
    device, mac = (("eth0", _mac_of(ns_path(lab.topo.node("node2").netns(lab.topo.name))))
                   if backend == "host-gw" else ("podnet.1", None))
    assert f"{node2_v6} via {gw} dev {device} metric 1024 onlink" in routes6, routes6
    # A unique local IPv6 network is masqueraded off-cluster, never between pods.
    table = sh(lab, "node1", "nft", "list", "table", "ip6", "podnet")
    assert ("ip6 saddr fd00:10:244::/56 ip6 daddr != fd00:10:244::/56 ip6 daddr != @nodes "
            "masquerade" in table), table
    # Pod-to-pod traffic of pods no policy selects skips tracking (policy's table decides).
    policy = sh(lab, "node1", "nft", "list", "table", "inet", "podnet_policy")
    assert ("ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244::/56 ip6 saddr != @policed6 "
            "ip6 daddr != @policed6 notrack" in policy), policy
    assert f"{gw} dev {device} lladdr" in neigh6 and (mac is None or mac in neigh6), neigh6
    for family in (4, 6):
        report = verify(lab, family)
        assert report.ok, (family, failures(report))
        assert len(report.pairs) == 28  # 12 pod->pod, 8 node->pod, 8 pod->node
    # The fast path carries IPv6 pods too: routed past the bridge (into the VXLAN device,
    # which encapsulates them), delivered past it; the stack forwards none of the packets.
    dst = next(p for p in lab.topo.pods if p.node == "node2")
    assert _forwarded(lab, "node1", "node1-p1", dst.ips[1]) == 0
    out = subprocess.run([*PODNET, "verify", "--lab", lab.topo.name, "--json"],
                         capture_output=True, text=True, timeout=120, check=False)
    both = json.loads(out.stdout)
    assert out.returncode == 0 and both["ok"] and both["ipv6"]["ok"]
    # As a cluster no lab built: the agents probe in each family, asked through etcd.
    wait_published(lab)
    code, remote, err = verify_etcd(lab)
    assert code == 0 and remote is not None and remote["ok"], (err, remote)
    assert len(remote["pairs"]) == len(remote["ipv6"]["pairs"]) == 28
    assert all(":" in p["seen_source"] for p in remote["ipv6"]["pairs"])


def test_a_missing_ipv6_route_is_named(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1, ip_family="dual", reconcile=2.0)
    node1 = lab.topo.node("node1")
    target = subnets(lab, "node2")[1]
    os.kill(node1.agent_pid, signal.SIGSTOP)  # hold the repair back while verify looks
    try:
        sh(lab, "node1", "ip", "-6", "route", "del", target)
        assert verify(lab, 4).ok
        report = verify(lab, 6)
        assert not report.ok
        assert f"node node1 lacks a route to {target} (node2's pods)" in " ".join(
            failures(report))
    finally:
        os.kill(node1.agent_pid, signal.SIGCONT)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total >> 16) + (total & 0xFFFF)
    return ~total & 0xFFFF


def _advert(src_mac: str, dst_mac: str, src: str, dst: str, target: str) -> bytes:
    """An Ethernet frame carrying a neighbour advertisement (solicited, override) for
    `target`, with its link-layer address option."""
    mac = bytes.fromhex(src_mac.replace(":", ""))
    body = struct.pack("!BBHI", 136, 0, 0, 0x60000000) + socket.inet_pton(
        socket.AF_INET6, target) + bytes([2, 1]) + mac
    s, d = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    pseudo = s + d + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", _checksum(pseudo + body)) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + s + d
    return bytes.fromhex(dst_mac.replace(":", "")) + mac + b"\x86\xdd" + ip6 + body


def test_a_pod_cannot_advertise_another_pods_address(make_lab: MakeLab) -> None:
    """IPv6 anti-spoofing covers neighbour discovery: a pod's advertisement for its own
    address passes its bridge port; one for a neighbour pod's address is dropped there."""
    lab = make_lab("vxlan", nodes=1, pods=3, ip_family="dual")
    (a, b, c) = lab.topo.pods
    ns = {p.name: ns_path(p.netns(lab.topo.name)) for p in lab.topo.pods}
    macs = {p.name: _mac_of(ns[p.name]) for p in lab.topo.pods}
    with netns.entered(ns[b.name]):
        rx = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    with netns.entered(ns[a.name]):
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with rx, tx:
        rx.setblocking(False)
        tx.bind(("eth0", 0))

        def adverts(target: str) -> int:
            time.sleep(0.3)
            with contextlib.suppress(BlockingIOError):
                while rx.recv(2048):
                    pass  # drain
            for _ in range(5):
                tx.send(_advert(macs[a.name], macs[b.name], a.ips[1], b.ips[1], target))
            time.sleep(0.4)
            seen = 0
            with contextlib.suppress(BlockingIOError):
                while data := rx.recv(2048):
                    if data[0] == 136 and data[8:24] == socket.inet_pton(socket.AF_INET6,
                                                                          target):
                        seen += 1
            return seen

        assert adverts(a.ips[1]) == 5  # its own address passes
        assert adverts(c.ips[1]) == 0  # a neighbour pod's: dropped at a's bridge port


def _mac_of(ns: str) -> str:
    """The MAC of eth0 in the namespace."""
    ipr = netns.iproute_in(ns)
    try:
        msg = links.by_name(ipr, "eth0")
        assert msg is not None
        return links.mac_of(msg)
    finally:
        ipr.close()


def test_l2_one_domain_in_both_families(make_lab: MakeLab) -> None:
    """Layer 2 in both families: every pod in the one IPv4 and the one IPv6 subnet, reached by
    ARP, neighbour discovery and switching; no route per peer."""
    lab = make_lab("l2", nodes=2, pods=2, ip_family="dual")
    for pod in lab.topo.pods:
        out = subprocess.run(["nsenter", f"--net={ns_path(pod.netns(lab.topo.name))}", "ip",
                              "-6", "-br", "addr", "show", "eth0"], capture_output=True,
                             text=True, check=True).stdout
        assert f"{pod.ips[1]}/56" in out  # the pods' prefix is the whole shared one
    assert sh(lab, "node1", "ip", "-6", "route", "show", "proto", "88") == ""
    for family in (4, 6):
        report = verify(lab, family)
        assert report.ok, (family, failures(report))


def _forwarded(lab: Lab, node: str, pod: str, dst: str) -> int:
    """Datagrams `node`'s stack forwarded (either family) while `pod` pinged `dst` 20 times."""
    def count() -> int:
        out = sh(lab, node, "nstat", "-a", "-z", "IpForwDatagrams", "Ip6OutForwDatagrams")
        return sum(int(line.split()[1]) for line in out.splitlines()[1:] if line.strip())

    before = count()
    ns = next(p.netns(lab.topo.name) for p in lab.topo.pods if p.name == pod)
    subprocess.run(["nsenter", f"--net={ns_path(ns)}", "ping", "-c", "20", "-i", "0.01", "-q",
                    dst], capture_output=True, check=True)
    return count() - before


@pytest.mark.parametrize("backend", ["l2", "host-gw", "vxlan"])
def test_both_families_over_an_ipv6_underlay(make_lab: MakeLab, backend: str) -> None:
    """The nodes and etcd have IPv6 addresses only: IPv4 pods ride it as well as IPv6 ones."""
    lab = make_lab(backend, nodes=2, pods=2, ip_family="dual", underlay_family="ipv6")
    node2 = lab.topo.node("node2")
    node2_ip = lab.topo.node_ip(node2)
    assert ":" in node2_ip and ":" in lab.topo.etcd_ip
    assert sh(lab, "node1", "ip", "-4", "addr", "show", "scope", "global",
              "dev", "eth0") == ""
    v4, v6 = subnets(lab, "node2")
    routes4 = sh(lab, "node1", "ip", "route", "show", "proto", "88")
    routes6 = sh(lab, "node1", "ip", "-6", "route", "show", "proto", "88")
    mtu = lab.conflist(lab.topo.nodes[0])["plugins"][0]["mtu"]
    if backend == "host-gw":  # IPv4 via an IPv6 next hop (RFC 5549), IPv6 as usual
        assert f"{v4} via inet6 {node2_ip} dev eth0" in routes4, routes4
        assert f"{v6} via {node2_ip} dev eth0" in routes6, routes6
        assert mtu == 1500
    elif backend == "vxlan":  # one device, its tunnel over IPv6: 20 bytes more than over IPv4
        details = sh(lab, "node1", "ip", "-d", "link", "show", "podnet.1")
        assert f"local {lab.topo.node_ip(lab.topo.node('node1'))} dev eth0" in details
        assert f"dst {node2_ip} self permanent" in sh(lab, "node1", "bridge", "fdb", "show",
                                                     "dev", "podnet.1")
        assert mtu == 1500 - 70
        table = sh(lab, "node1", "nft", "list", "table", "ip6", "podnet")
        assert "udp dport 8472 ip6 saddr != @nodes" in table, table
    else:  # the node bridge took the underlay's IPv6 address
        assert "fd00:192:168:100::b/64" in sh(lab, "node1", "ip", "-6", "addr", "show",
                                              "dev", "podnet-br")
        assert routes4 == routes6 == ""
    for family in (4, 6):
        report = verify(lab, family)
        assert report.ok, (family, failures(report))
    # The diagram shows both families: the pods' addresses, and the routes of each.
    svg = subprocess.run([*PODNET, "lab", "diagram", "--name", lab.topo.name, "-o",
                          os.path.join(lab.dir, "d.svg")], capture_output=True, text=True,
                         check=True).stdout.strip()
    with open(svg) as fh:
        text = fh.read()
    assert all(ip in text for pod in lab.topo.pods for ip in pod.ips)
    if backend == "host-gw":
        assert f"{v4} via inet6 {node2_ip} dev eth0" in text and f"{v6} via {node2_ip}" in text
    # The fast path carries both families (IPv4 pods via the IPv6 next hop too): the stack
    # forwards none of their packets.
    dst = next(p for p in lab.topo.pods if p.node == "node2")
    assert _forwarded(lab, "node1", "node1-p1", dst.ip) == 0
    assert _forwarded(lab, "node1", "node1-p1", dst.ips[1]) == 0


def _tunnel_packets(lab: Lab, node: str, *directions: str) -> int:
    stats = json.loads(sh(lab, node, "ip", "-j", "-s", "link", "show", "podnet.1"))[0]
    return sum(int(stats["stats64"][d]["packets"]) for d in directions)


@pytest.mark.parametrize("underlay", ["ipv4", "ipv6"])
def test_the_fast_path_tunnels_both_families_itself(make_lab: MakeLab, underlay: str) -> None:
    """vxlan: the program encapsulates and decapsulates pods of both families over either
    underlay, full-size packets included (the VXLAN devices carry none of them); and over
    IPv6, what it sends carries the UDP checksum a peer's device checks."""
    lab = make_lab("vxlan", nodes=2, pods=1, ip_family="dual", underlay_family=underlay,
                   reconcile=600.0)  # no repair of what the test takes away below
    src = ns_path(lab.topo.pods[0].netns(lab.topo.name))
    dst = next(p for p in lab.topo.pods if p.node == "node2")
    mtu = lab.conflist(lab.topo.nodes[0])["plugins"][0]["mtu"]

    def ping(ip: str, *args: str) -> None:
        out = subprocess.run(["nsenter", f"--net={src}", "ping", "-q", "-W", "2", *args, ip],
                             capture_output=True, text=True)
        assert " 0% packet loss" in out.stdout, (ip, args, out.stdout)

    nodes = ("node1", "node2")
    for ip, headers in zip(dst.ips, (28, 48), strict=True):
        before = {n: _tunnel_packets(lab, n, "rx", "tx") for n in nodes}
        ping(ip, "-c", "200", "-i", "0.002")
        ping(ip, "-c", "20", "-i", "0.005", "-M", "do", "-s", str(mtu - headers))
        for n in nodes:  # 220 each way crossed each node
            assert _tunnel_packets(lab, n, "rx", "tx") - before[n] < 10, (ip, n)
    # node2's device decapsulates once node2's program is off its underlay: it drops a
    # datagram whose UDP checksum is wrong (over IPv6; over IPv4 there is none).
    rtnl = netns.rtnl_in(ns_path(lab.topo.node("node2").netns(lab.topo.name)))
    try:
        eth0 = rtnl.get_link("eth0")
        assert eth0 is not None
        tc.detach_ingress(rtnl, eth0.index)
    finally:
        rtnl.close()
    before_rx = _tunnel_packets(lab, "node2", "rx")
    for ip in dst.ips:
        ping(ip, "-c", "20", "-i", "0.01")
    assert _tunnel_packets(lab, "node2", "rx") - before_rx >= 40


def test_ipv4_pods_over_an_ipv6_underlay(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1, underlay_family="ipv6")
    assert all(":" not in p.ip and len(p.ips) == 1 for p in lab.topo.pods)
    report = verify(lab, 4)
    assert report.ok, failures(report)
    assert lab.conflist(lab.topo.nodes[0])["plugins"][0]["mtu"] == 1430


@pytest.mark.parametrize(("backend", "underlay"), [
    ("l2", "ipv6"), ("host-gw", "ipv4"), ("host-gw", "ipv6"), ("vxlan", "ipv4"),
    ("vxlan", "ipv6")])
def test_ipv6_only_clusters(make_lab: MakeLab, backend: str, underlay: str) -> None:
    """Pods with IPv6 addresses only, over either underlay: nodes lease IPv6 subnets (the
    stored config is format 2, which agents of format 1 refuse), and every pair connects."""
    lab = make_lab(backend, nodes=2, pods=1, ip_family="ipv6", underlay_family=underlay)
    for pod in lab.topo.pods:
        assert len(pod.ips) == 1 and pod.ip == pod.ips[0]
        assert ipaddress.ip_address(pod.ip) in ipaddress.ip_network("fd00:10:244::/56")
    assert all(":" in s for n in status(lab)["nodes"] for s in n["pod_subnets"])
    report = verify(lab, 6)
    assert report.ok, failures(report)
    assert len(report.pairs) == 10
    # The fast path carries them: neither node's stack forwards their packets.
    dst = next(p for p in lab.topo.pods if p.node == "node2")
    assert _forwarded(lab, "node1", "node1-p1", dst.ip) == 0
    if backend == "vxlan" and underlay == "ipv6":
        with netns.entered(ns_path(status(lab)["etcd"]["netns"])):  # etcd's sockets too
            store = lab.etcd_store()
            try:
                config = store.get_config()
                assert config is not None and config.families == [6]
                leases, _ = store.snapshot(config)
            finally:
                store.close()
        assert {str(lease.subnet) for lease in leases.values()} == {
            s for n in status(lab)["nodes"] for s in n["pod_subnets"]}
        wait_published(lab)
        code, remote, err = verify_etcd(lab)
        assert code == 0 and remote is not None and remote["ok"], (err, remote)
        assert len(remote["pairs"]) == 10


@pytest.mark.parametrize(("mode", "family"), [("bgp", "dual"), ("static", "dual"),
                                              ("bgp", "ipv6")])
def test_gateway_routes_both_families(make_lab: MakeLab, mode: str, family: str) -> None:
    """The router's links carry IPv6 beside IPv4: each node announces each pod subnet over a
    BGP session of its family (BIRD), or the router's agent routes each via the node's
    address of that family (static); every pair connects in each family."""
    lab = make_lab("gateway", nodes=2, pods=1, underlay="routed", gateway_mode=mode,
                   ip_family=family)
    node2 = status(lab)["nodes"][1]
    v6 = next(s for s in node2["pod_subnets"] if ":" in s)
    router = subprocess.run(["nsenter", f"--net={ns_path(lab.prefix + 'rt')}", "ip", "-6",
                             "route", "show", v6], capture_output=True, text=True,
                            check=True).stdout
    assert f"via {node2['node_ips'][1]} dev node2" in router, router
    for f in [4, 6] if family == "dual" else [6]:
        report = verify(lab, f)
        assert report.ok, (f, failures(report))


@pytest.mark.parametrize("mode", ["bgp", "static"])
def test_gateway_over_an_ipv6_only_underlay(make_lab: MakeLab, mode: str) -> None:
    """Nodes, router and etcd speak IPv6 only: IPv4 pods ride the IPv6 BGP session (extended
    next hop, RFC 8950) or the router's agent (static), so the router routes their subnet via
    the node's IPv6 address, and each node its IPv4 pod network via its IPv6 gateway."""
    lab = make_lab("gateway", nodes=2, pods=1, underlay="routed", gateway_mode=mode,
                   ip_family="dual", underlay_family="ipv6")
    node2 = status(lab)["nodes"][1]
    node2_ip = lab.topo.node_ip(lab.topo.node("node2"))
    assert node2["node_ips"] == [node2_ip] and ":" in node2_ip and ":" in lab.topo.etcd_ip
    v4, v6 = node2["pod_subnets"]

    def router(*argv: str) -> str:
        return subprocess.run(["nsenter", f"--net={ns_path(lab.prefix + 'rt')}", "ip", *argv],
                              capture_output=True, text=True, check=True).stdout

    assert f"via inet6 {node2_ip} dev node2" in router("route", "show", v4)
    assert f"via {node2_ip} dev node2" in router("-6", "route", "show", v6)
    gateway1 = lab.topo.gateway(lab.topo.node("node1"))
    assert f"10.244.0.0/16 via inet6 {gateway1} dev eth0 proto 88" in sh(
        lab, "node1", "ip", "route", "show")
    assert sh(lab, "node1", "ip", "-4", "addr", "show", "scope", "global", "dev", "eth0") == ""
    for f in (4, 6):
        report = verify(lab, f)
        assert report.ok, (f, failures(report))


def test_gateway_refuses_a_node_without_ipv6(make_lab: MakeLab, tmp_path: object) -> None:
    """A dual-stack gateway cluster announces IPv6 pods over IPv6: a node that has no IPv6
    address is refused with the family named, before it takes a lease."""
    lab = make_lab("gateway", nodes=1, pods=0, underlay="routed", ip_family="dual")
    proc = subprocess.run(  # etcd's namespace: IPv4 only
        ["nsenter", f"--net={ns_path(lab.prefix + 'cp')}", *PODNET, "agent",
         *lab.etcd_args(), "--node-name", "v4only", "--iface", "eth0",
         "--cni-conf-dir", f"{tmp_path}/net.d", "--state-dir", f"{tmp_path}/state",
         "--cni-socket", f"{tmp_path}/cni.sock", "--metrics", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert ("announces IPv6 pods over IPv6: node v4only has no IPv6 address"
            in proc.stderr), proc.stderr
    shown = subprocess.run(["nsenter", f"--net={ns_path(lab.prefix + 'cp')}", *PODNET,
                            "cluster", "show", *lab.etcd_args()], capture_output=True,
                           text=True, timeout=60, check=True).stdout
    assert "v4only" not in shown
    # The lease holds the node's address of each family, and its subnet of each.
    node1 = next(line.split() for line in shown.splitlines() if line.startswith("node1 "))
    assert node1[1:3] == ["192.168.101.2", "fd00:192:168:101::2"], shown
    assert len(node1) == 5 and ":" in node1[4], shown
