"""The agent's side of the fast path: load the program with this node's constants, attach it
to the uplinks and every pod's veth, keep the pod map free of pods that are gone, and take it
all away again."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from typing import Any

from pyroute2 import IPRoute

from podnet.fastpath import bpf, podmap, program
from podnet.netlink import links, tc
from podnet.netlink.fastlink import Rtnl

log = logging.getLogger("podnet.fastpath")


class FastPath:
    def __init__(self, bridge: str, mtu: int, cluster: ipaddress.IPv4Network,
                 switched: bool = False, skip_ports: list[int] | None = None) -> None:
        self.bridge = bridge
        self.mtu = mtu
        self.cluster = cluster
        self.switched = switched  # the l2 design: frames are switched, not routed
        self.uplink = ""  # the first uplink's name: where the plugin finds the pod map
        self.prog_id: int | None = None
        self.skip_ports = skip_ports or []  # veths on the bridge that are not pods'
        self._loaded_for: tuple[tuple[int, ...], int, str | None] | None = None

    def ensure(self, uplinks: list[int]) -> bool:
        """Attach to the uplinks and pod ports where it is not (first start, a device made
        anew, a filter someone removed); whether anything had to be. Raises bpf.BpfError
        where the kernel will not load it."""
        ipr = IPRoute(groups=0)
        rtnl = Rtnl()
        try:
            bridge = self._bridge(ipr)
            self.uplink = str(links.link(ipr, uplinks[0]).get_attr("IFLA_IFNAME"))
            mac = links.mac_of(links.link(ipr, bridge)) if self.switched else None
            wanted = (tuple(uplinks), bridge, mac)
            if self._loaded_for == wanted and all(
                    tc.ingress_program(rtnl, u) == self.prog_id for u in uplinks):
                return False
            self._load(rtnl, uplinks, bridge, mac, self._ports(ipr, bridge))
            self._loaded_for = wanted
            return True
        finally:
            rtnl.close()
            ipr.close()

    def _load(self, rtnl: Rtnl, uplinks: list[int], bridge: int, bridge_mac: str | None,
              ports: list[int]) -> None:
        # The map of a program already attached (an earlier agent's) keeps its pods' entries.
        map_fd = None
        for u in uplinks:
            with podmap.attached(rtnl, u) as fast:
                if fast is not None:
                    map_fd = os.dup(fast.map_fd)
                    break
        if map_fd is None:
            map_fd = bpf.create_hash_map(podmap.NAME, podmap.KEY_SIZE, podmap.VALUE_SIZE,
                                         podmap.MAX_PODS)
        try:
            prog_fd = bpf.load_program(tc.FILTER_NAME,
                                       program.build(map_fd, uplinks, bridge, self.cluster,
                                                     bridge_mac))
            try:
                for index in uplinks + ports:
                    tc.attach_ingress(rtnl, index, prog_fd)
                self.prog_id = bpf.object_id(prog_fd, "prog")
            finally:
                os.close(prog_fd)
        finally:
            os.close(map_fd)
        log.info("fast path attached to %d uplinks and %d pod ports", len(uplinks), len(ports))

    def _bridge(self, ipr: IPRoute) -> int:
        """The pods' bridge, made now if no pod has made it yet: the program routes as if
        packets arrived on it, so it must exist first."""
        index = links.index_of(ipr, self.bridge)
        if index is None:
            ipr.link("add", ifname=self.bridge, kind="bridge", mtu=self.mtu)
            msg = links.by_name(ipr, self.bridge)
            assert msg is not None
            index = int(msg["index"])
            # Pinned, as the plugin pins a bridge it makes: else it takes the lowest port MAC.
            ipr.link("set", index=index, address=links.mac_of(msg), state="up")
        return index

    def _ports(self, ipr: IPRoute, bridge: int) -> list[int]:
        """The pods' veths on the bridge (not the l2 design's link to the node bridge)."""
        skip = set(self.skip_ports)
        return [int(m["index"]) for m in ipr.get_links()
                if m.get_attr("IFLA_MASTER") == bridge and links.kind_of(m) == "veth"
                and m["index"] not in skip]

    def pods(self) -> int:
        """How many addresses the pod map holds (pods on the fast path); 0 before attaching."""
        if self._loaded_for is None:
            return 0
        rtnl = Rtnl()
        try:
            with podmap.attached(rtnl, self._loaded_for[0][0]) as fast:
                return 0 if fast is None else len(fast.entries())
        finally:
            rtnl.close()

    def sweep(self, uplinks: list[int]) -> int:
        """Drop map entries whose veth is gone or off the bridge (a pod whose namespace was
        deleted without a CNI DEL); how many."""
        ipr = IPRoute(groups=0)
        rtnl = Rtnl()
        try:
            with podmap.attached(rtnl, uplinks[0]) as fast:
                if fast is None:
                    return 0
                # Entries first, ports second: a pod's ADD makes its veth before its entry, so
                # an entry seen here has its veth in the listing unless the veth is gone.
                entries = fast.entries()
                index = links.index_of(ipr, self.bridge)
                ports = set(self._ports(ipr, index)) if index is not None else set()
                stale = [ip for ip, e in entries.items() if e.ifindex not in ports
                         and fast.get(ip) == e]  # not re-used by a pod started meanwhile
                for ip in stale:
                    fast.delete(ip)
                return len(stale)
        finally:
            rtnl.close()
            ipr.close()


def remove() -> None:
    """Detach podnet's program from every link of this node (the map goes with it)."""
    ipr = IPRoute(groups=0)
    rtnl = Rtnl()
    try:
        msgs: list[Any] = list(ipr.get_links())
        for m in msgs:
            index = int(m["index"])
            with contextlib.suppress(OSError):
                if tc.ingress_program(rtnl, index) is not None:  # ours, by its name
                    tc.detach_ingress(rtnl, index)
    finally:
        rtnl.close()
        ipr.close()
