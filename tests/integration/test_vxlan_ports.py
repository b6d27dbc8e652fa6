"""Which outer source ports a node's VXLAN device picks from, as the fast path's program must
know them to pick the same: the device's own range, or the namespace's local port range for a
device made without one (by an older podnet, kept across an upgrade)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from podnet.backends.vxlan import source_ports
from podnet.netlink import links, netns
from podnet.wire import VXLAN_SOURCE_PORTS


@pytest.mark.parametrize("ranged", [True, False], ids=["own range", "none"])
def test_the_range_is_the_devices_or_the_namespaces(make_ns: Callable[[str], str],
                                                    ranged: bool) -> None:
    with netns.entered(make_ns("vxlan")):
        netns.write_sysctl("net/ipv4/ip_local_port_range", "40000 40100")
        ipr = netns.iproute_in(None)
        try:
            spec = {"vxlan_port_range": {"low": VXLAN_SOURCE_PORTS[0],
                                         "high": VXLAN_SOURCE_PORTS[1]}} if ranged else {}
            ipr.link("add", ifname="podnet.1", kind="vxlan", vxlan_id=1, vxlan_port=8472,
                     **spec)
            msg = links.by_name(ipr, "podnet.1")
            assert msg is not None
            assert source_ports(msg) == (VXLAN_SOURCE_PORTS if ranged else (40000, 40100))
        finally:
            ipr.close()
