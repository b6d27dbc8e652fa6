"""The eBPF fast path in the lab: pods of different nodes talk past the bridges with IP's
semantics intact, and the pod map follows pods, agents and devices."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import threading
import time

import pytest

from podnet.fastpath import bpf, podmap
from podnet.lab.lab import Lab, ns_path
from podnet.netlink import netns, tc
from podnet.wire import VXLAN_PORT
from tests.conftest import rps_masks
from tests.lab.conftest import MakeLab, failures, fast_path_at, transfer, verify
from tests.lab.test_lab_ops import sh, wait_for

ETH_P_IPV6 = 0x86DD
ETH_FRAME_MAX = 1514  # the underlay's MTU and an Ethernet header: a frame on the wire


def state(lab: Lab, node: str) -> tuple[int | None, dict[str, int | None],
                                        dict[str, int]]:
    """(the uplink's program id, each pod veth's program id, the pod map: address -> veth)."""
    links = json.loads(sh(lab, node, "ip", "-j", "link", "show", "master", "kube-bridge"))
    with fast_path_at(lab, node) as (rtnl, uplink, fast):
        veths = {link["ifname"]: tc.ingress_program(rtnl, link["ifindex"]) for link in links}
        entries = {} if fast is None else {str(ip): e.ifindex
                                           for ip, e in fast.entries().items()}
        return tc.ingress_program(rtnl, uplink), veths, entries


def tunnels(lab: Lab, node: str) -> dict[str, str]:
    """The node's tunnel map: peer pod subnet (network address) -> the peer's node IP."""
    with fast_path_at(lab, node) as (_, _, fast):
        assert fast is not None and 4 in fast.tunnels
        items = bpf.map_items(fast.tunnels[4], 4, podmap.TUNNEL_VALUE.size, 64)
    return {str(ipaddress.IPv4Address(k)): str(ipaddress.IPv4Address(v[8:12]))
            for k, v in items}


def link_packets(lab: Lab, node: str, link: str, *directions: str) -> int:
    stats = json.loads(sh(lab, node, "ip", "-j", "-s", "link", "show", link))[0]["stats64"]
    return sum(int(stats[d]["packets"]) for d in directions)


def normal_path_packets(lab: Lab, node: str) -> int:
    """Packets the normal path carried between this node's pods and the uplink: routed, they
    are received by the bridge device (and, in the overlay, cross the VXLAN device too);
    switched (l2), they cross the link between the pod bridge and the node bridge."""
    if lab.topo.backend == "l2":
        return link_packets(lab, node, "podnet-l2a", "rx", "tx")
    tunnel = link_packets(lab, node, "podnet.1", "rx", "tx") if lab.topo.backend == "vxlan" \
        else 0
    return link_packets(lab, node, "kube-bridge", "rx") + tunnel


def ping(lab: Lab, pod: int, dst: str, *args: str) -> subprocess.CompletedProcess[str]:
    ns = ns_path(lab.topo.pods[pod].netns(lab.topo.name))
    return subprocess.run(["nsenter", f"--net={ns}", "ping", "-W", "2", *args, dst],
                          capture_output=True, text=True)


@pytest.mark.parametrize("backend", ["host-gw", "vxlan", "l2"])
def test_pods_of_different_nodes_skip_the_bridges(make_lab: MakeLab, backend: str) -> None:
    lab = make_lab(backend, nodes=2, pods=2)
    assert lab.conflist(lab.topo.nodes[0])["plugins"][0]["fastPathUplink"] == "eth0"
    for node in ("node1", "node2"):
        prog, veths, entries = state(lab, node)
        pods = [p for p in veths if p.startswith("veth")]  # l2: also the node bridge's link
        assert prog is not None and len(pods) == 2 and {veths[p] for p in pods} == {prog}
        assert sorted(entries) == sorted(p.ip for p in lab.topo.pods if p.node == node)
    before = {n: normal_path_packets(lab, n) for n in ("node1", "node2")}
    remote = lab.topo.pods[2].ip  # node2's first pod
    out = ping(lab, 0, remote, "-c", "1000", "-i", "0.001", "-q")
    assert " 0% packet loss" in out.stdout, out.stdout
    # 2000 packets crossed each node; what the normal path carried meanwhile is ARP and a
    # fresh lab's IPv6 neighbour and multicast chatter, which floods the l2 domain.
    for n in ("node1", "node2"):
        assert normal_path_packets(lab, n) - before[n] < 200
    # Full-size packets too (vxlan: encapsulated, they fill the underlay's MTU exactly).
    before = {n: normal_path_packets(lab, n) for n in ("node1", "node2")}
    mtu = lab.conflist(lab.topo.nodes[0])["plugins"][0]["mtu"]
    out = ping(lab, 0, remote, "-c", "100", "-i", "0.002", "-q", "-M", "do", "-s", str(mtu - 28))
    assert " 0% packet loss" in out.stdout, out.stdout
    for n in ("node1", "node2"):
        assert normal_path_packets(lab, n) - before[n] < 20
    if backend == "l2":  # switched: no hop counts
        assert ping(lab, 0, remote, "-c", "1", "-t", "1").returncode == 0
    else:  # routed twice: the packet dies where the normal path would drop it
        expired = ping(lab, 0, remote, "-c", "1", "-t", "2")
        assert expired.returncode != 0 and "Time to live exceeded" in expired.stdout
        assert ping(lab, 0, remote, "-c", "1", "-t", "3").returncode == 0
    report = verify(lab)  # every pair, source addresses seen as sent
    assert report.ok, failures(report)
    assert all(p.seen_source for p in report.pairs)


def test_pod_map_follows_pods_agents_and_devices(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    pod = lab.add_pod("node1")
    assert pod.ip in state(lab, "node1")[2]
    lab.remove_pod(pod)
    assert pod.ip not in state(lab, "node1")[2]

    # A pod whose namespace vanished without a DEL: the agent's sweep drops its entry.
    gone = lab.add_pod("node1")
    netns.remove(gone.netns(lab.topo.name))
    lab.topo.pods.remove(gone)
    assert wait_for(lambda: gone.ip not in state(lab, "node1")[2], 10.0)

    # A restarted agent keeps the map (pods started meanwhile stay fast) and re-attaches.
    entries = state(lab, "node1")[2]
    lab.restart_agent("node1")
    prog, veths, after = state(lab, "node1")
    assert after == entries and set(veths.values()) == {prog}

    # The tunnel map follows the peers: a node joining, a node leaving.
    subnets = {n.name: lab.conflist(n)["plugins"][0]["ipam"]["subnet"].split("/")[0]
               for n in lab.topo.nodes}
    assert tunnels(lab, "node1") == {subnets["node2"]: "192.168.100.12"}
    node3 = lab.add_node()
    subnet3 = lab.conflist(node3)["plugins"][0]["ipam"]["subnet"].split("/")[0]
    assert wait_for(lambda: tunnels(lab, "node1").get(subnet3) == lab.topo.node_ip(node3), 10.0)
    lab.remove_node(node3.name)
    assert wait_for(lambda: subnet3 not in tunnels(lab, "node1"), 15.0)

    # The tunnel device deleted and re-made by the agent gets the program again.
    sh(lab, "node1", "ip", "link", "del", "podnet.1")

    def tunnel_attached() -> bool:
        rtnl = netns.rtnl_in(lab.target_netns("node1"))
        try:
            dev = rtnl.get_link("podnet.1")
            return dev is not None and tc.ingress_program(rtnl, dev.index) is not None
        finally:
            rtnl.close()

    assert wait_for(tunnel_attached, 15.0)
    time.sleep(0.5)
    report = verify(lab)
    assert report.ok, failures(report)


def test_check_reports_a_pod_off_the_fast_path(make_lab: MakeLab) -> None:
    lab = make_lab("host-gw", nodes=1, pods=0)
    node = lab.topo.nodes[0]
    conflist = lab.conflist(node)
    ns = netns.create(f"pnl-{lab.topo.name}-chk")
    rt = lab.runtime(node)
    try:
        result = rt.add_list(conflist, "chk", ns)
        rt.check_list(conflist, "chk", ns, result)
        ip = ipaddress.ip_interface(result["ips"][0]["address"]).ip
        veth = next(i["name"] for i in result["interfaces"] if i["name"].startswith("veth"))
        sh(lab, "node1", "tc", "filter", "del", "dev", veth, "ingress")
        with pytest.raises(Exception, match="program is not attached"):
            rt.check_list(conflist, "chk", ns, result)
        rt.del_list(conflist, "chk", ns)
        assert str(ip) not in state(lab, "node1")[2]
    finally:
        netns.remove(ns)


def test_fast_path_off_by_config(make_lab: MakeLab) -> None:
    lab = make_lab("host-gw", nodes=2, pods=1, fast_path=False)
    assert "fastPathUplink" not in lab.conflist(lab.topo.nodes[0])["plugins"][0]
    for node in ("node1", "node2"):
        prog, veths, _ = state(lab, node)
        assert prog is None and set(veths.values()) == {None}
    report = verify(lab)
    assert report.ok, failures(report)


def test_an_overlay_flow_takes_one_path(make_lab: MakeLab) -> None:
    """A bulk TCP flow's segmentation-offload super-packets are encapsulated and decapsulated
    by the program like its small packets: none crosses either node's VXLAN device, so no
    packet of the flow overtakes another on a shorter path."""
    lab = make_lab("vxlan", nodes=2, pods=2)
    sender, receiver = lab.topo.pods[2], lab.topo.pods[0]  # node2's first pod, node1's
    size = 20 << 20
    before = {n: (link_packets(lab, n, "podnet.1", "rx", "tx"),
                  link_packets(lab, n, "eth0", "rx", "tx")) for n in ("node1", "node2")}
    assert transfer(lab, sender, receiver, size) == str(size)
    for n, (device, uplink) in before.items():
        crossed = link_packets(lab, n, "eth0", "rx", "tx") - uplink
        assert crossed > 300 and link_packets(lab, n, "podnet.1", "rx", "tx") == device, n


def test_over_ipv6_a_flow_keeps_one_outer_port(make_lab: MakeLab) -> None:
    """Over an IPv6 underlay a bulk flow's segmentation-offload super-packets take the VXLAN
    device (the program cannot have the kernel checksum their segments' outer UDP) and its
    other packets the program: both give the flow the same outer source port, so that the
    underlay (its ECMP, a receiver's RSS) sees one flow, not two that can reorder."""
    lab = make_lab("vxlan", nodes=2, pods=1, underlay_family="ipv6")
    sender, receiver = lab.topo.pods[1], lab.topo.pods[0]  # node2's pod, node1's
    with netns.entered(ns_path(lab.topo.nodes[0].netns(lab.topo.name))):
        tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6))
    ports: dict[bool, set[int]] = {True: set(), False: set()}  # by: a super-packet?
    done = threading.Event()

    def capture() -> None:
        head = bytearray(64)
        while not done.is_set():
            try:
                size, (_, _, kind, _, _) = tap.recvfrom_into(head, len(head), socket.MSG_TRUNC)
            except TimeoutError:
                continue
            # Arriving (not sent by node1), IPv6 with UDP next, to the VXLAN port.
            if kind != socket.PACKET_OUTGOING and head[20] == socket.IPPROTO_UDP \
                    and int.from_bytes(head[56:58], "big") == VXLAN_PORT:
                ports[size > ETH_FRAME_MAX].add(int.from_bytes(head[54:56], "big"))

    with tap:
        tap.bind(("eth0", 0))
        tap.settimeout(0.2)
        thread = threading.Thread(target=capture)
        thread.start()
        try:
            size = 20 << 20
            assert transfer(lab, sender, receiver, size) == str(size)
        finally:
            done.set()
            thread.join()
    # Super-packets came (the device's), and others (the program's), all from the one port.
    assert ports[True] and ports[False] and len(ports[True] | ports[False]) == 1, ports


def test_steered_flows_arrive_in_order(make_lab: MakeLab) -> None:
    """With receive steering (the lab's links as NICs with RSS, each pod's host veth by the
    agent's conflist) a bulk TCP flow between pods of two nodes, over the overlay's fast path,
    arrives in order: no retransmission. Unsteered, veths reorder such a flow across the CPUs
    (hundreds of retransmissions in seconds, docs/benchmarks.md)."""
    lab = make_lab("vxlan", nodes=2, pods=1, receive_steering=True)
    t = lab.topo
    assert lab.conflist(t.nodes[0])["plugins"][0]["receiveSteering"] is True
    for node in ("node1", "node2"):
        veths = [link["ifname"] for link in json.loads(sh(
            lab, node, "ip", "-j", "link", "show", "master", "kube-bridge"))]
        for name in [*veths, "eth0"]:
            masks = rps_masks(lab.target_netns(node), name)
            assert masks and all(masks)
    src, dst = (ns_path(p.netns(t.name)) for p in t.pods)
    server = subprocess.Popen(["nsenter", f"--net={dst}", "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: subprocess.run(["nsenter", f"--net={dst}", "ss", "-Hltn",
                                                "sport = 5201"], capture_output=True,
                                               text=True).stdout.strip() != "", 10)
        out = subprocess.run(["nsenter", f"--net={src}", "iperf3", "-c", t.pods[1].ip, "-t",
                              "3", "-J"], capture_output=True, text=True, timeout=30,
                             check=True)
    finally:
        server.kill()
        server.wait()
    sent = json.loads(out.stdout)["end"]["sum_sent"]
    assert sent["bytes"] > 0
    # A drop would still cost a retransmission; reordering costs hundreds.
    assert sent["retransmits"] < 10, sent
