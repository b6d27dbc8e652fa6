"""The agent's nftables table as the kernel takes it, for each backend's tunnel match: the
tunnel is closed to everyone but the nodes (the VXLAN case is also attacked in tests/lab)."""

from __future__ import annotations

import ipaddress

import pytest

from podnet.firewall import cluster
from podnet.netlink import netns
from tests.conftest import ns_run


@pytest.mark.parametrize("match", ["udp dport 8472", "ip protocol gre"])
def test_tunnel_accepted_only_from_nodes(node: str, match: str) -> None:
    with netns.entered(node):
        cluster.apply([ipaddress.IPv4Network("10.244.0.0/16")],
                      [ipaddress.IPv4Address("192.168.100.11")], 4, match)
    listed = ns_run(node, "nft", "list", "chain", "ip", cluster.TABLE, "input").stdout
    assert f"{match} ip saddr != @nodes counter packets 0 bytes 0 drop" in listed
    assert "192.168.100.11" in ns_run(node, "nft", "list", "set", "ip", cluster.TABLE,
                                      "nodes").stdout


def test_no_tunnel_no_input_chain(node: str) -> None:
    with netns.entered(node):
        cluster.apply([ipaddress.IPv4Network("10.244.0.0/16")], [], 4, None)
    assert "chain input" not in ns_run(node, "nft", "list", "table", "ip", cluster.TABLE).stdout
