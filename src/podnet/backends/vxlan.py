"""The overlay: one VXLAN device per node; per peer a permanent neighbour entry (the peer's
gateway address -> its VTEP MAC), an FDB entry (VTEP MAC -> the peer's node IP) and an on-link
route to the peer's pod subnet through the device. `directRouting` routes on-link peers as
host-gw does and tunnels only the rest."""

from __future__ import annotations

import hashlib
import ipaddress
import platform
import re
from dataclasses import replace
from typing import Any

from podnet.backends.base import BackendError, Entry, FastPathSpec, Fdb
from podnet.backends.hostgw import node_mac, routed_via_node
from podnet.backends.tunnel import TunnelBackend
from podnet.datastore.model import Lease, NodeIP
from podnet.netlink import links, netns
from podnet.wire import VXLAN6_OVERHEAD, VXLAN_OVERHEAD, VXLAN_PORT, VXLAN_SOURCE_PORTS

DEFAULT_VNI = 1


def tx_offload_wanted(option: object, kernel_release: str) -> bool:
    """Whether to keep TX checksum offload on the VXLAN device.

    Kernels before 5.7 miscompute the checksums of encapsulated UDP once netfilter NATs them
    (fixed by ea64d8d6c675): the traffic is dropped or retried for a minute (Calico #3145,
    flannel #1279), so `auto` turns offload off there, as Calico does. Newer kernels keep it on:
    turning it off costs most of the tunnel's throughput (docs/benchmarks.md). An underlay
    behind NAT has been seen to break it on new kernels too (flannel #2152): `false` for those.
    """
    if isinstance(option, bool):
        return option
    if option != "auto":
        raise BackendError(f"txChecksumOffload is true, false or 'auto', not {option!r}")
    found = re.match(r"(\d+)\.(\d+)", kernel_release)
    return found is not None and (int(found[1]), int(found[2])) >= (5, 7)


def vtep_mac(node: str, vni: int) -> str:
    """A MAC that stays the same across agent restarts, so peers' entries stay valid."""
    digest = hashlib.sha256(f"{node}/{vni}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0A, *digest[:5]))  # locally administered, unicast


class VxlanBackend(TunnelBackend):
    name = "vxlan"
    device_kind = "vxlan"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        opts = self.config.backend
        self.vni = int(opts.get("vni", DEFAULT_VNI))
        self.port = int(opts.get("port", VXLAN_PORT))
        self.direct = bool(opts.get("directRouting", False))
        if not 0 < self.vni < 1 << 24 or not 0 < self.port < 65536:
            raise BackendError(f"invalid VXLAN VNI {self.vni} or port {self.port}")
        self.device = f"podnet.{self.vni}"
        self.mac = vtep_mac(self.node.name, self.vni)
        self.tx_offload = tx_offload_wanted(opts.get("txChecksumOffload", "auto"),
                                            platform.release())
        self.source_ports = VXLAN_SOURCE_PORTS

    def pod_mtu(self) -> int:
        return self.node.mtu - (VXLAN_OVERHEAD if self.node.ip.version == 4 else VXLAN6_OVERHEAD)

    def setup(self) -> dict[str, Any]:
        self.source_ports = source_ports(self.ensure_device())
        set_tx_checksum_offload(self.device, self.tx_offload)
        return {"vtepMAC": self.mac, "nodeMAC": node_mac(self.node.iface_index)}

    def owned_devices(self) -> list[int]:
        # directRouting's IPv6 neighbour entries sit on the uplink.
        return super().owned_devices() + (
            [self.node.iface_index] if self.direct and 6 in self.config.families else [])

    def device_spec(self) -> dict[str, Any]:
        # The device's underlay family is its local address's: peers' FDB entries are of it.
        local = "vxlan_local" if self.node.ip.version == 4 else "vxlan_local6"
        return {"kind": self.device_kind, "vxlan_id": self.vni, local: str(self.node.ip),
                "vxlan_port": self.port, "vxlan_link": self.node.iface_index,
                "vxlan_port_range": {"low": VXLAN_SOURCE_PORTS[0], "high": VXLAN_SOURCE_PORTS[1]},
                "vxlan_learning": 0, "vxlan_udp_csum": 0, "address": self.mac}

    def device_matches(self, msg: Any) -> bool:
        data = links.info_data(msg)
        return (links.kind_of(msg) == self.device_kind and data is not None
                and data.get_attr("IFLA_VXLAN_ID") == self.vni
                and data.get_attr("IFLA_VXLAN_PORT") == self.port
                and data.get_attr("IFLA_VXLAN_LOCAL" if self.node.ip.version == 4
                                  else "IFLA_VXLAN_LOCAL6") == str(self.node.ip)
                and links.mac_of(msg) == self.mac)

    def tunnel_match(self) -> str | None:
        return f"udp dport {self.port}"

    def fast_path(self) -> FastPathSpec:
        from podnet.fastpath.program import Encap  # with the fast path, after the routes

        # Offload off is a workaround for checksum bugs of the underlay's path; the program's
        # packets would meet them as the device's did, so they stay with the device.
        config = self.config
        lens = ((config.network.version, config.subnet_len),) + (
            ((6, config.subnet_len6),) if config.network6 is not None else ())
        encap = (Encap(self.vni, self.port, self.node.ip, self.mac, lens, self.source_ports)
                 if self.tx_offload else None)
        return replace(super().fast_path(), encap=encap)

    def fast_path_tunnel(self, peer: Lease) -> tuple[NodeIP, str] | None:
        # What the device was given for the peer: none where it is routed directly.
        with self._lock:
            entries = self._entries.get(peer.node, frozenset())
        fdb = next((e for e in entries if isinstance(e, Fdb)), None)
        return None if fdb is None else (ipaddress.ip_address(fdb.dst), fdb.lladdr)

    def entries_for(self, peer: Lease) -> frozenset[Entry]:
        if self.direct and self.connected_link(peer.node_ip) == self.node.iface_index:
            return routed_via_node(peer, self.node.iface_index)
        mac = peer.attrs.get("vtepMAC")
        if not isinstance(mac, str):
            return frozenset()
        return self.tunnelled(peer, mac) | {Fdb(mac, str(peer.node_ip), self.index)}


def source_ports(msg: Any) -> tuple[int, int]:
    """The range a VXLAN device picks its outer source ports from, as the kernel takes it:
    the device's own, or where it has none (made by an older podnet, and kept so as not to
    drop traffic on an upgrade) the namespace's local port range."""
    data = links.info_data(msg)
    ports = data.get_attr("IFLA_VXLAN_PORT_RANGE") if data is not None else None
    if ports is not None and ports["low"] < ports["high"]:
        return int(ports["low"]), int(ports["high"])
    low, high = netns.read_sysctl("net/ipv4/ip_local_port_range").split()
    return int(low), int(high)


def set_tx_checksum_offload(device: str, enable: bool) -> None:
    """`ethtool -K DEVICE tx-checksum-ip-generic on|off`, through pyroute2's ethtool."""
    from pyroute2.ethtool import Ethtool

    tool = Ethtool()
    try:
        features = tool.get_features(device)
        feature = features.features.get("tx-checksum-ip-generic")
        if feature is not None and feature.enable != enable:
            feature.enable = enable
            tool.set_features(device, features)
    finally:
        tool.close()
