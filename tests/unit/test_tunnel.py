"""The overlay backends' per-peer entries, GRE's included (its kernel module is missing here, so
its device cannot be made on these machines: what it programs is checked as data)."""

from __future__ import annotations

import ipaddress

import pytest

from podnet.backends.base import BackendError, Fdb, NodeInfo, Route
from podnet.backends.base import Neigh as NeighEntry
from podnet.backends.gre import GreBackend, kernel_has_gre
from podnet.backends.vxlan import VxlanBackend
from podnet.datastore.model import Lease, NetworkConfig
from podnet.netlink import codec, rtmsg

NODE = NodeInfo("node1", ipaddress.IPv4Address("192.168.100.11"), "eth0", 2, 1500)
PEER = Lease(ipaddress.IPv4Network("10.244.7.0/24"), "node2",
             ipaddress.IPv4Address("192.168.100.12"), {"vtepMAC": "0a:01:02:03:04:05"})


def _backend(cls: type[GreBackend] | type[VxlanBackend], kind: str) -> GreBackend | VxlanBackend:
    backend = cls(NODE, NetworkConfig(ipaddress.IPv4Network("10.244.0.0/16"), 24,
                                      {"type": kind}))
    backend.index = 9
    return backend


def test_gre_routes_a_peer_on_link_to_a_neighbour_whose_address_is_the_peer_node() -> None:
    gre = _backend(GreBackend, "gre")
    assert gre.entries_for(PEER) == {
        NeighEntry("10.244.7.0", "192.168.100.12", 9),
        Route("10.244.7.0/24", "10.244.7.0", 9, onlink=True)}
    assert gre.pod_mtu() == 1476 and gre.tunnel_match() == "ip protocol gre"


def test_vxlan_adds_the_fdb_entry_to_the_same_shape() -> None:
    vxlan = _backend(VxlanBackend, "vxlan")
    assert vxlan.entries_for(PEER) == {
        NeighEntry("10.244.7.0", "0a:01:02:03:04:05", 9),
        Fdb("0a:01:02:03:04:05", "192.168.100.12", 9),
        Route("10.244.7.0/24", "10.244.7.0", 9, onlink=True)}
    assert vxlan.tunnel_match() == "udp dport 8472"


@pytest.mark.skipif(kernel_has_gre(), reason="this kernel has ip_gre")
def test_gre_is_refused_without_ip_gre() -> None:
    with pytest.raises(BackendError, match="ip_gre"):
        _backend(GreBackend, "gre").setup()


def test_an_ipv4_link_layer_address_is_packed_as_four_bytes() -> None:
    data = rtmsg.neigh("replace", 1, "10.244.7.0", "192.168.100.12", 9)
    assert bytes([192, 168, 100, 12]) in data and bytes.fromhex("0a0102030405") not in data
    assert codec.lladdr(bytes([192, 168, 100, 12])) == "192.168.100.12"
    assert codec.lladdr(bytes.fromhex("0a0102030405")) == "0a:01:02:03:04:05"
    assert codec.lladdr(b"") is None
