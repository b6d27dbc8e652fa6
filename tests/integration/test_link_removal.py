"""A DEL is done when the kernel announces the pod's veth pair removed, not when the deleting
call returns (which waits out RCU grace periods first): the notice is the peer's own, the
last of the pair, and no other notice stands in for it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import pytest

from podnet.netlink import netns
from podnet.netlink.fastlink import Rtnl
from podnet.plugins import bridge
from podnet.plugins.context import HostContext
from tests.conftest import links_in, ns_run


@pytest.fixture
def paired(make_ns: Callable[[str], str]) -> str:
    """A namespace with a bridge holding one end of veth pair va/vb (vb the port)."""
    path = make_ns("node")
    for argv in (("ip", "link", "add", "br0", "type", "bridge"),
                 ("ip", "link", "add", "va", "type", "veth", "peer", "name", "vb"),
                 ("ip", "link", "set", "vb", "master", "br0"),
                 ("ip", "addr", "add", "10.9.0.1/24", "dev", "va")):
        assert ns_run(path, *argv).returncode == 0
    return path


@pytest.fixture
def told() -> Iterator[tuple[int, int]]:
    """A pipe: its read end a `link_removed` waits on, its write end what ends the wait."""
    read, write = os.pipe()
    yield read, write
    os.close(read)
    os.close(write)


def index(rtnl: Rtnl, name: str) -> int:
    link = rtnl.get_link(name)
    assert link is not None
    return link.index


def test_the_notice_comes_once_both_ends_are_gone(paired: str, told: tuple[int, int]) -> None:
    monitor, deleter = netns.rtnl_in(paired), netns.rtnl_in(paired)
    try:
        monitor.watch_links()
        peer = index(monitor, "vb")
        thread = threading.Thread(target=deleter.delete_link, args=("va",))
        thread.start()
        assert monitor.link_removed(peer, told[0])
        assert monitor.get_link("va") is None and monitor.get_link("vb") is None
        assert ns_run(paired, "bridge", "link", "show").stdout.strip() == ""
        thread.join()
    finally:
        monitor.close()
        deleter.close()


def test_no_other_notice_stands_in(paired: str, told: tuple[int, int]) -> None:
    """The port leaving its bridge (RTM_DELLINK of AF_BRIDGE, the port's index) and another
    link's removal are not the peer's removal: the wait ends by its descriptor."""
    monitor = netns.rtnl_in(paired)
    try:
        monitor.watch_links()
        peer = index(monitor, "vb")
        assert ns_run(paired, "ip", "link", "add", "vc", "type", "veth", "peer", "name",
                      "vd").returncode == 0
        for argv in (("ip", "link", "set", "vb", "nomaster"), ("ip", "link", "del", "vc")):
            assert ns_run(paired, *argv).returncode == 0
        os.write(told[1], b"1")
        assert not monitor.link_removed(peer, told[0])
        assert monitor.get_link("vb") is not None
    finally:
        monitor.close()


def test_a_peer_outside_the_node_is_waited_for_by_the_call(make_ns: Callable[[str], str]
                                                           ) -> None:
    """Where the node's namespace will hear nothing (the peer elsewhere), the deleting call's
    own return ends the DEL."""
    pod, elsewhere, host = make_ns("pod"), make_ns("elsewhere"), make_ns("host")
    assert ns_run(pod, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "p",
                  "netns", elsewhere).returncode == 0
    ctx = HostContext(host)
    rtnl = netns.rtnl_in(pod)
    try:
        bridge.delete_pod_link(ctx, rtnl, "eth0", pod)
    finally:
        rtnl.close()
        ctx.close()
    assert links_in(pod) == ["lo"] and links_in(elsewhere) == ["lo"]
