"""The agent's side of the fast path: load the program with this node's constants, attach it
to the uplinks and every pod's veth, keep the pod map free of pods that are gone, and take it
all away again."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from dataclasses import replace
from typing import Any

from pyroute2 import IPRoute

from podnet.fastpath import bpf, btf, podmap, program
from podnet.netlink import links, netns, tc
from podnet.netlink.fastlink import Rtnl

log = logging.getLogger("podnet.fastpath")


class FastPath:
    def __init__(self, bridge: str, mtu: int, cluster: ipaddress.IPv4Network | None,
                 switched: bool = False, skip_ports: list[int] | None = None,
                 encap: program.Encap | None = None,
                 cluster6: ipaddress.IPv6Network | None = None) -> None:
        self.bridge = bridge
        self.mtu = mtu
        self.cluster = cluster  # None: an IPv6-only cluster
        self.cluster6 = cluster6  # a cluster's IPv6 pods ride it too
        self.switched = switched  # the l2 design: frames are switched, not routed
        self.encap = encap  # the overlay: the program encapsulates to the tunnel maps' peers
        self._tunnel_fds: dict[int, int] = {}  # by pod family, kept open: peer events update
        # them one by one
        self.uplink = ""  # the first uplink's name: where the plugin finds the pod map
        self.prog_id: int | None = None
        self.skip_ports = skip_ports or []  # veths on the bridge that are not pods'
        self._loaded_for: tuple[tuple[int, ...], int, str | None] | None = None

    def reconcile(self, uplinks: list[int]) -> int:
        """Attach to the uplinks and pod ports where it is not (first start, a device made
        anew, a filter someone removed) and drop pod map entries whose veth is gone or off
        the bridge (a namespace deleted without a CNI DEL); how many of either. One link dump
        serves both. Raises bpf.BpfError where the kernel will not load the program."""
        ipr = IPRoute(groups=0)
        rtnl = Rtnl()
        try:
            # The program routes as if packets arrived on the bridge: it must exist first.
            bridge = links.ensure_bridge(ipr, self.bridge, None, self.mtu)
            # One look at what is attached serves reading the entries, keeping the maps
            # across a reload, and dropping stale entries (a reload keeps the same pod map).
            with podmap.attached_any(rtnl, uplinks) as fast:
                # Entries before the link dump: an ADD makes its veth before its entry, so an
                # entry seen here has its veth in the dump unless the veth is gone.
                entries = fast.entries() if fast is not None else {}
                msgs = {int(m["index"]): m for m in ipr.get_links()}
                self.uplink = str(msgs[uplinks[0]].get_attr("IFLA_IFNAME"))
                skip = set(self.skip_ports)
                ports = [i for i, m in msgs.items() if m.get_attr("IFLA_MASTER") == bridge
                         and links.kind_of(m) == "veth" and i not in skip]
                mac = links.mac_of(msgs[bridge]) if self.switched else None
                wanted = (tuple(uplinks), bridge, mac)
                changed = 0
                if self._loaded_for != wanted or any(
                        tc.ingress_program(rtnl, u) != self.prog_id for u in uplinks):
                    self._load(rtnl, uplinks, bridge, mac, ports, fast)
                    self._loaded_for = wanted
                    changed += 1
                for ip, e in entries.items():
                    # (an entry seen means fast is set) Not a pod started since the read:
                    if e.ifindex not in ports and fast is not None and fast.get(ip) == e:
                        fast.delete(ip)
                        changed += 1
                return changed
        finally:
            rtnl.close()
            ipr.close()

    def _load(self, rtnl: Rtnl, uplinks: list[int], bridge: int, bridge_mac: str | None,
              ports: list[int], existing: podmap.Attached | None) -> None:
        # The maps of a program already attached (an earlier agent's) keep their entries,
        # where this program reads them as it wrote them (an older release's tunnel map held
        # its peers in another layout: read as this one's, it would send pods' packets astray).
        def kept(fd: int | None, wanted: object, sizes: tuple[int, int]) -> int | None:
            if fd is None or wanted is None or bpf.map_sizes(fd) != sizes:
                return None
            return os.dup(fd)

        map_fd = map6_fd = None
        tunnel_fds: dict[int, int] = {}
        if existing is not None:
            map_fd = kept(existing.map_fd, self.cluster, (podmap.KEY_SIZES[4], podmap.VALUE_SIZE))
            map6_fd = kept(existing.map6_fd, self.cluster6,
                           (podmap.KEY_SIZES[6], podmap.VALUE_SIZE))
            for family, fd in existing.tunnels.items():
                sizes = (podmap.KEY_SIZES[family], podmap.TUNNEL_VALUE.size)
                if (dup := kept(fd, self._max_tunnels(family) or None, sizes)) is not None:
                    tunnel_fds[family] = dup
        try:
            if self.cluster is not None and map_fd is None:
                map_fd = bpf.create_hash_map(podmap.NAME, podmap.KEY_SIZE, podmap.VALUE_SIZE,
                                             podmap.MAX_PODS)
            if self.cluster6 is not None and map6_fd is None:
                map6_fd = bpf.create_hash_map(podmap.NAME6, podmap.KEY_SIZES[6],
                                              podmap.VALUE_SIZE, podmap.MAX_PODS)
            for family, name in podmap.TUNNEL_MAPS.items():
                if family not in tunnel_fds and (most := self._max_tunnels(family)):
                    tunnel_fds[family] = bpf.create_hash_map(
                        name, podmap.KEY_SIZES[family], podmap.TUNNEL_VALUE.size, most,
                        prealloc=False)
            overlay = None if self.encap is None else program.Overlay(self.encap, tunnel_fds)
            conntrack = btf.conntrack()
            if conntrack is not None:
                _liberal_tcp_tracking()
            pods6 = (None if self.cluster6 is None or map6_fd is None
                     else program.Pods6(map6_fd, self.cluster6))
            prog_fd = bpf.load_program(tc.FILTER_NAME,
                                       program.build(map_fd, uplinks, bridge, self.cluster,
                                                     bridge_mac, overlay, pods6, conntrack))
            try:
                for index in uplinks + ports:
                    tc.attach_ingress(rtnl, index, prog_fd, pods6 is not None)
                self.prog_id = bpf.object_id(prog_fd, "prog")
            finally:
                os.close(prog_fd)
        except BaseException:
            for fd in tunnel_fds.values():
                os.close(fd)
            raise
        finally:
            for pod_fd in (map_fd, map6_fd):
                if pod_fd is not None:
                    os.close(pod_fd)
        for fd in self._tunnel_fds.values():
            os.close(fd)
        self._tunnel_fds = tunnel_fds
        log.info("fast path attached to %d uplinks and %d pod ports", len(uplinks), len(ports))

    def _max_tunnels(self, family: int) -> int:
        """How many peers a family's tunnel map holds: a subnet per node; 0 where the
        program does not tunnel that family."""
        length = self.encap.subnet_len(family) if self.encap is not None else None
        cluster = self.cluster if family == 4 else self.cluster6
        if length is None or cluster is None:
            return 0
        return min(1 << (length - cluster.prefixlen), podmap.MAX_TUNNELS)

    # -- the overlay's peers ----------------------------------------------------------------
    def set_tunnels(self, want: dict[podmap.Subnet, podmap.Peer]) -> int:
        """Make the tunnel maps hold exactly these peers' subnets (a resync's, a
        reconcile's); how many entries changed. A failure is logged: those peers' pods take
        the normal path."""
        changed = 0
        for family, fd in self._tunnel_fds.items():
            try:
                have = dict(bpf.map_items(fd, podmap.KEY_SIZES[family],
                                          podmap.TUNNEL_VALUE.size, self._max_tunnels(family)))
                wanted = {net.network_address.packed: podmap.tunnel_value(p)
                          for net, p in want.items() if net.version == family}
                for key in have.keys() - wanted.keys():
                    changed += bpf.map_delete(fd, key)
                for key, value in wanted.items():
                    if have.get(key) != value:
                        bpf.map_update(fd, key, value)
                        changed += 1
            except OSError as exc:
                log.warning("fast path: cannot update the IPv%d tunnel map: %r", family, exc)
        return changed

    def set_tunnel(self, subnet: podmap.Subnet, peer: podmap.Peer | None) -> None:
        """One subnet's entry (a lease event's); None: not tunnelled (routed directly,
        gone)."""
        fd = self._tunnel_fds.get(subnet.version)
        if fd is None:
            return
        try:
            if peer is None:
                bpf.map_delete(fd, subnet.network_address.packed)
            else:
                bpf.map_update(fd, subnet.network_address.packed, podmap.tunnel_value(peer))
        except OSError as exc:
            log.warning("fast path: cannot update the tunnel to %s: %r", subnet, exc)

    def hold(self, policed: set[podmap.PodIP]) -> int:
        """Hold exactly these pod addresses on the normal path (NetworkPolicy judges them
        there), release every other; how many entries changed."""
        if self._loaded_for is None:
            return 0
        rtnl = Rtnl()
        changed = 0
        try:
            with podmap.attached(rtnl, self._loaded_for[0][0]) as fast:
                for ip, entry in ({} if fast is None else fast.entries()).items():
                    if fast is not None and entry.policed != (ip in policed):
                        fast.put(ip, replace(entry, policed=ip in policed))
                        changed += 1
        finally:
            rtnl.close()
        return changed

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


def _liberal_tcp_tracking() -> None:
    """Conntrack on this node takes a segment beyond the window it last saw as its
    connection's, not as invalid: the program carries a policed pod's established
    connections past conntrack, which sees their FIN again with sequence numbers far ahead,
    and an invalid FIN is judged as a new connection (and dropped where policy isolates).
    The kernel's own flow offload sets this per connection for the same reason; kube-proxy
    sets it node-wide as this does (--conntrack-tcp-be-liberal). Out-of-window RSTs stay
    invalid."""
    try:
        netns.ensure_sysctl("net/netfilter/nf_conntrack_tcp_be_liberal", "1")
    except OSError as exc:
        log.warning("fast path: cannot make TCP tracking liberal: %r", exc)


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
