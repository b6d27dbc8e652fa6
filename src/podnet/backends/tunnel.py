"""What the overlay backends (vxlan, gre) share: one tunnel device per node holding its pod
subnet's network address; per peer and family a permanent neighbour entry for the peer's subnet
network address and an on-link route to the peer's subnet through it; the device re-made if
deleted."""

from __future__ import annotations

import errno
import ipaddress
import logging
from abc import abstractmethod
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.backends.base import Backend, BackendError, Entry, FastPathSpec, Neigh, Route
from podnet.datastore.model import Lease
from podnet.netlink import links

log = logging.getLogger("podnet.backend")


class TunnelBackend(Backend):
    device: str  # named podnet.<something>
    device_kind: str  # the kernel's link kind
    index = 0

    @classmethod
    def cleanup(cls, ipr: IPRoute, state_dir: str) -> None:
        for msg in ipr.get_links():
            if (links.kind_of(msg) == cls.device_kind
                    and str(msg.get_attr("IFLA_IFNAME")).startswith("podnet.")):
                ipr.link("del", index=msg["index"])

    @abstractmethod
    def device_spec(self) -> dict[str, Any]:
        """pyroute2 `link add` arguments of the device (name and MTU are added)."""

    @abstractmethod
    def device_matches(self, msg: Any) -> bool:
        """Whether an existing device was made with this node's options."""

    def ensure_device(self) -> Any:
        """The device, made or re-made where missing or of other options; its link."""
        ipr = IPRoute(groups=0)
        try:
            msg = links.by_name(ipr, self.device)
            if msg is not None and not self.device_matches(msg):
                ipr.link("del", index=msg["index"])  # changed options: make it anew
                msg = None
            if msg is None:
                spec = self.device_spec()
                try:
                    ipr.link("add", ifname=self.device, mtu=self.pod_mtu(), **spec)
                except NetlinkError as exc:
                    if exc.code == errno.EOPNOTSUPP:
                        raise BackendError(f"this kernel has no {spec['kind']} support") from None
                    raise
                msg = links.by_name(ipr, self.device)
                assert msg is not None
            self.index = int(msg["index"])
            ipr.link("set", index=self.index, state="up", mtu=self.pod_mtu())
            return msg
        finally:
            ipr.close()

    def start(self, own: Lease) -> None:
        super().start(own)
        ipr = IPRoute(groups=0)
        try:
            # The subnet's network address on the device: the source of tunnelled node traffic,
            # and the next hop peers route this subnet through.
            want = ipaddress.ip_interface((own.subnet.network_address,
                                           own.subnet.max_prefixlen))
            for have in links.addresses(ipr, self.index):
                if have != want and not have.ip.is_link_local:
                    links.del_address(ipr, self.index, str(have))
            links.add_address(ipr, self.index, str(want))
        finally:
            ipr.close()

    def repair_devices(self) -> bool:
        ipr = IPRoute(groups=0)
        try:
            present = links.by_name(ipr, self.device) is not None
        finally:
            ipr.close()
        if present:
            return False
        log.warning("%s was deleted: making it anew", self.device)
        self.setup()
        if self.own is not None:
            self.start(self.own)
        return True

    def fast_path(self) -> FastPathSpec:
        # Decapsulated packets arrive on the device; direct-routed ones on the uplink.
        return FastPathSpec([self.node.iface_index, self.index])

    def owned_devices(self) -> list[int]:
        return [self.index]

    def tunnelled(self, peer: Lease, lladdr: str) -> frozenset[Entry]:
        """Each of the peer's subnets on-link through the device; its next hop (the subnet's
        network address) resolves to lladdr (a VTEP MAC for VXLAN, the outer destination
        address for GRE). One device carries both families: the FDB entry, per MAC, serves
        both, and so does the MTU."""
        out: set[Entry] = set()
        for subnet in peer.subnets:
            gw = str(subnet.network_address)
            out |= {Neigh(gw, lladdr, self.index),
                    Route(str(subnet), gw, self.index, onlink=True)}
        return frozenset(out)
