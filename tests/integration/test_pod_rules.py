"""The plugin's per-pod nftables rules as the kernel takes them: the anti-spoofing table's
hook rule made once however many pods start at once, kept by every later ADD (an ADD that
rewrote it would delete a rule, and wait for the kernel when its socket closes), and a pod's
rules gone with its DEL, a second DEL finding nothing to do; and what they admit."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable

from podnet.firewall import libnft, nft
from podnet.netlink import links, netns
from tests.conftest import ns_run

MAC = "02:00:00:00:00:01"


def hook_rules(node: str) -> list[int]:
    out = ns_run(node, "nft", "-j", "-a", "list", "chain", "bridge", nft.SPOOF_TABLE,
                 "prerouting").stdout
    return [item["rule"]["handle"] for item in json.loads(out)["nftables"] if "rule" in item]


def test_antispoof_hook_made_once_and_pod_rules_removed(node: str) -> None:
    def add(i: int) -> None:
        with netns.entered(node), libnft.Session() as session:
            nft.add_antispoof(f"vethp{i}", MAC, [f"10.1.0.{i + 2}/24"], run=session.run)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = hook_rules(node)
    assert len(first) == 1  # the first ADDs raced to make the table: one rule
    add(8)
    assert hook_rules(node) == first  # a later ADD keeps it
    ports = ns_run(node, "nft", "list", "map", "bridge", nft.SPOOF_TABLE, "ports").stdout
    assert all(f'"vethp{i}" : jump vethp{i}' in ports for i in range(9))

    with netns.entered(node):
        for i in range(9):
            nft.del_antispoof(f"vethp{i}")
        nft.del_antispoof("vethp0")  # again: nothing left, no error
    table = ns_run(node, "nft", "list", "table", "bridge", nft.SPOOF_TABLE).stdout
    assert "vethp" not in table
    assert hook_rules(node) == first


def test_antispoof_admits_only_the_pods_sources(make_ns: Callable[[str], str]) -> None:
    """Frames from a pod's port reach the bridge only with its MAC and, per family, its own
    source address (IPv6: also any link-local one and DAD's unspecified one)."""
    node, pod = make_ns("node"), make_ns("pod")
    ipr = netns.iproute_in(node)
    try:
        ipr.link("add", ifname="br0", kind="bridge")
        ipr.link("add", ifname="vethp0", kind="veth", peer={"ifname": "eth0",
                                                               "net_ns_fd": pod})
        br, port = links.index_of(ipr, "br0"), links.index_of(ipr, "vethp0")
        ipr.link("set", index=port, master=br, state="up")
        ipr.link("set", index=br, state="up")
    finally:
        ipr.close()
    pod_ipr = netns.iproute_in(pod)
    try:
        eth0 = links.by_name(pod_ipr, "eth0")
        assert eth0 is not None
        mac = links.mac_of(eth0)
        pod_ipr.link("set", index=eth0["index"], state="up")
    finally:
        pod_ipr.close()
    with netns.entered(node):
        nft.add_antispoof("vethp0", mac, ["10.1.0.2/24", "fd00::2/64"])
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    with netns.entered(pod):
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with rx, tx:
        rx.bind(("br0", 0))
        rx.settimeout(0.3)
        tx.bind(("eth0", 0))

        def passed(src_mac: str, src_ip: str) -> bool:
            v6 = ":" in src_ip
            if v6:
                ip = (struct.pack("!IHBB", 6 << 28, 0, 59, 1)  # no next header
                      + socket.inet_pton(socket.AF_INET6, src_ip)
                      + socket.inet_pton(socket.AF_INET6, "ff02::1"))
            else:  # with its checksum: the bridge's netfilter drops a bad one first
                ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, 0, 0, 1, 253, 0,
                                 socket.inet_aton(src_ip), socket.inet_aton("10.1.0.255"))
                words = sum(struct.unpack("!10H", ip))
                words = (words & 0xFFFF) + (words >> 16)
                ip = ip[:10] + struct.pack("!H", ~words & 0xFFFF) + ip[12:]
            frame = (b"\xff" * 6 + bytes.fromhex(src_mac.replace(":", ""))
                     + (b"\x86\xdd" if v6 else b"\x08\x00") + ip)
            tx.send(frame)
            try:
                while True:
                    if rx.recv(2048)[:len(frame)] == frame:
                        return True
            except TimeoutError:
                return False

        assert passed(mac, "10.1.0.2") and passed(mac, "fd00::2")
        assert passed(mac, "fe80::1234") and passed(mac, "::")
        assert not passed(mac, "10.1.0.9") and not passed(mac, "fd00::9")
        assert not passed("02:00:00:00:00:99", "10.1.0.2")


def test_antispoof_table_of_an_earlier_version_gains_its_set(node: str) -> None:
    """A node's table made before the link-local set existed (an upgrade): the next ADD adds
    the set and the pod's rules, and keeps the hook's rule."""
    t = f"bridge {nft.SPOOF_TABLE}"
    with netns.entered(node):
        libnft.run(f"add table {t}\nadd map {t} ports {{ type ifname : verdict; }}\n"
                   f"add chain {t} prerouting {{ type filter hook prerouting priority -300; "
                   f"policy accept; }}\nadd rule {t} prerouting iifname vmap @ports\n")
    first = hook_rules(node)
    with netns.entered(node):
        nft.add_antispoof("vethp0", MAC, ["10.1.0.2/24", "fd00::2/64"])
    listed = ns_run(node, "nft", "list", "table", "bridge", nft.SPOOF_TABLE).stdout
    assert "set linklocal6" in listed and "ip6 saddr != @linklocal6" in listed
    assert hook_rules(node) == first
