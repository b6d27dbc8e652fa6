"""The yardstick for podnet's own cost: beside podnet's pods, one pod per node wired the way a
flannel user gets it, by the reference `bridge` + `host-local` plugins (no podnet firewall, pod
traffic tracked by conntrack), and the other nodes' pod subnets reached by hand-made host-gw
routes or a hand-made VXLAN device with static FDB and neighbour entries, as flannel programs.
The pods live in the lab's namespaces, so `lab down` removes them."""

from __future__ import annotations

import ipaddress
import os

from pyroute2 import IPRoute

from podnet.lab.lab import Lab, ns_path
from podnet.netlink import links, netns
from podnet.wire import VXLAN_OVERHEAD

SUBNETS = ipaddress.IPv4Network("10.250.0.0/16")
VTEPS = ipaddress.IPv4Network("10.251.0.0/16")
VNI, PORT = 42, 4790  # apart from podnet's 1 and 8472


def build(lab: Lab, mode: str) -> list[tuple[str, str]]:
    """One reference pod per node, routed by `mode` (host-gw or vxlan): their (netns, ip)."""
    nodes = lab.topo.nodes
    mtu = 1500 - (VXLAN_OVERHEAD if mode == "vxlan" else 0)
    subnets = list(SUBNETS.subnets(new_prefix=24))
    pods = []
    for i, node in enumerate(nodes):
        name = f"{lab.prefix}ref-{node.name}"
        lab.new_ns(name)  # recorded: the lab's `down` removes it
        path = ns_path(name)
        conf = {"cniVersion": "1.0.0", "name": "ref", "plugins": [{
            "type": "bridge", "bridge": "refbr0", "isGateway": True, "mtu": mtu,
            "ipam": {"type": "host-local", "subnet": str(subnets[i + 1]),
                     "routes": [{"dst": "0.0.0.0/0"}],
                     "dataDir": os.path.join(lab.dir, "ref-ipam")}}]}
        result = lab.runtime(node).add_list(conf, name, path)
        pods.append((path, result["ips"][0]["address"].split("/")[0]))
    for i, node in enumerate(nodes):
        ipr = netns.iproute_in(ns_path(node.netns(lab.topo.name)))
        try:
            tunnel = _vxlan(ipr, lab, i) if mode == "vxlan" else None
            for j, peer in enumerate(nodes):
                if j == i:
                    continue
                if tunnel is not None:
                    links.add_route(ipr, str(subnets[j + 1]), _vtep(j), tunnel,
                                    flags=4)  # onlink: the VTEP has no connected route
                else:
                    links.add_route(ipr, str(subnets[j + 1]), lab.topo.node_ip(peer), None)
        finally:
            ipr.close()
    return pods


def _vtep(i: int) -> str:
    return str(VTEPS.network_address + (i + 1) * 256)


def _mac(i: int) -> str:
    return f"02:fa:00:00:{(i + 1) >> 8:02x}:{(i + 1) & 0xff:02x}"


def _vxlan(ipr: IPRoute, lab: Lab, i: int) -> int:
    """Node i's VXLAN device with every peer's FDB and neighbour entry; its index."""
    nodes = lab.topo.nodes
    ipr.link("add", ifname="refvx", kind="vxlan", vxlan_id=VNI,
             vxlan_local=lab.topo.node_ip(nodes[i]), vxlan_port=PORT,
             vxlan_link=links.index_of(ipr, "eth0"), vxlan_learning=0, address=_mac(i),
             mtu=1500 - VXLAN_OVERHEAD)
    index = links.index_of(ipr, "refvx")
    assert index is not None
    ipr.link("set", index=index, state="up")
    links.add_address(ipr, index, f"{_vtep(i)}/32")
    for j, peer in enumerate(nodes):
        if j != i:
            ipr.neigh("replace", dst=_vtep(j), lladdr=_mac(j), ifindex=index,
                      state=0x80)  # permanent
            ipr.fdb("replace", ifindex=index, lladdr=_mac(j), state=0x80,
                    flags=2, dst=lab.topo.node_ip(peer))  # NTF_SELF: the device's
    return index
