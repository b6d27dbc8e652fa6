"""host-local's IPAM config: range sets, legacy single-subnet form, routes, dataDir."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from podnet.cni.errors import INVALID_NETWORK_CONFIG, CNIError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_DATA_DIR = "/var/lib/cni/networks"


def _bad(msg: str) -> CNIError:
    return CNIError(INVALID_NETWORK_CONFIG, f"IPAM config: {msg}")


@dataclass(frozen=True)
class Range:
    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress | None

    def __contains__(self, ip: object) -> bool:
        return (isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
                and ip.version == self.subnet.version
                and int(self.start) <= int(ip) <= int(self.end))

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"

    def overlaps(self, other: Range) -> bool:
        return (self.subnet.version == other.subnet.version
                and int(self.start) <= int(other.end) and int(other.start) <= int(self.end))

    @classmethod
    def parse(cls, obj: Any) -> Range:
        if not isinstance(obj, dict):
            raise _bad("a range must be an object")
        try:
            subnet = ipaddress.ip_network(str(obj.get("subnet", "")), strict=False)
        except ValueError:
            raise _bad(f"invalid subnet {obj.get('subnet')!r}") from None
        if subnet.max_prefixlen - subnet.prefixlen < 2:
            raise _bad(f"network {subnet} too small to allocate from")
        first = subnet.network_address + 1
        # IPv4 keeps the broadcast address out; IPv6 has none.
        last = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
        start = _addr_in(obj, "rangeStart", subnet) or first
        end = _addr_in(obj, "rangeEnd", subnet) or last
        if int(start) > int(end):
            raise _bad(f"rangeStart {start} is after rangeEnd {end}")
        gateway = _addr_in(obj, "gateway", subnet) or first
        return cls(subnet, start if int(start) > int(first) else first,
                   end if int(end) < int(last) else last, gateway)


def _addr_in(obj: dict[str, Any], key: str, subnet: IPNetwork) -> IPAddress | None:
    raw = obj.get(key)
    if raw in (None, ""):
        return None
    try:
        addr = ipaddress.ip_address(str(raw))
    except ValueError:
        raise _bad(f"invalid {key} {raw!r}") from None
    if addr not in subnet:
        raise _bad(f"{key} {addr} is outside subnet {subnet}")
    return addr


@dataclass(frozen=True)
class RangeSet:
    ranges: tuple[Range, ...]

    def range_for(self, ip: IPAddress) -> Range | None:
        return next((r for r in self.ranges if ip in r), None)

    def overlaps(self, other: RangeSet) -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)


@dataclass
class IPAMConfig:
    name: str
    range_sets: list[RangeSet]
    routes: list[dict[str, str]] = field(default_factory=list)
    data_dir: str = DEFAULT_DATA_DIR
    dns: dict[str, Any] = field(default_factory=dict)
    requested: list[IPAddress] = field(default_factory=list)


def parse(netconf: dict[str, Any], cni_args: dict[str, str]) -> IPAMConfig:
    ipam = netconf.get("ipam")
    if not isinstance(ipam, dict):
        raise _bad("missing 'ipam' object")
    raw_sets: Any = ipam.get("ranges")
    if raw_sets is None:
        if "subnet" not in ipam:
            raise _bad("no IP ranges specified")
        raw_sets = [[{k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway")
                      if k in ipam}]]
    elif "subnet" in ipam:
        raise _bad("give either 'ranges' or 'subnet', not both")
    if not isinstance(raw_sets, list) or not raw_sets:
        raise _bad("'ranges' must be a non-empty list of range sets")
    sets: list[RangeSet] = []
    for raw in raw_sets:
        if not isinstance(raw, list) or not raw:
            raise _bad("each range set must be a non-empty list of ranges")
        rset = RangeSet(tuple(Range.parse(r) for r in raw))
        versions = {r.subnet.version for r in rset.ranges}
        if len(versions) > 1:
            raise _bad(f"range set {rset} mixes IPv4 and IPv6")
        for i, a in enumerate(rset.ranges):
            for b in rset.ranges[i + 1:]:
                if a.overlaps(b):
                    raise _bad(f"ranges {a} and {b} overlap")
        for other in sets:
            if rset.overlaps(other):
                raise _bad(f"range sets {rset} and {other} overlap")
        sets.append(rset)
    routes = ipam.get("routes", [])
    if not isinstance(routes, list) or not all(
            isinstance(r, dict) and isinstance(r.get("dst"), str) for r in routes):
        raise _bad("'routes' must be a list of objects with a 'dst'")
    for route in routes:
        try:
            ipaddress.ip_network(route["dst"], strict=False)
            if route.get("gw"):
                ipaddress.ip_address(route["gw"])
        except ValueError:
            raise _bad(f"invalid route {route}") from None
    data_dir = ipam.get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str) or not data_dir.startswith("/"):
        raise _bad(f"dataDir {data_dir!r} must be an absolute path")
    dns = ipam.get("dns", netconf.get("dns", {}))
    return IPAMConfig(
        name=str(netconf["name"]), range_sets=sets, routes=[dict(r) for r in routes],
        data_dir=data_dir, dns=dns if isinstance(dns, dict) else {},
        requested=_requested_ips(netconf, cni_args))


def _requested_ips(netconf: dict[str, Any], cni_args: dict[str, str]) -> list[IPAddress]:
    """Static requests, as host-local takes them: CNI_ARGS IP=, args.cni.ips, runtimeConfig.ips."""
    raw: list[str] = [p for p in cni_args.get("IP", "").split(",") if p]
    args = netconf.get("args")
    if isinstance(args, dict) and isinstance(args.get("cni"), dict):
        raw += list(args["cni"].get("ips") or [])
    runtime = netconf.get("runtimeConfig")
    if isinstance(runtime, dict):
        raw += list(runtime.get("ips") or [])
    out: list[IPAddress] = []
    for item in raw:
        try:
            out.append(ipaddress.ip_interface(str(item)).ip)
        except ValueError:
            raise _bad(f"invalid requested IP {item!r}") from None
    return out
