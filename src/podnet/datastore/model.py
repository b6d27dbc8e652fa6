"""The cluster's network config and the lease payload, with their validation (pure logic)."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

IPv4Network = ipaddress.IPv4Network
IPv6Network = ipaddress.IPv6Network
# A node's underlay address: IPv4, or IPv6 over an IPv6 underlay.
NodeIP = ipaddress.IPv4Address | ipaddress.IPv6Address
PodNetwork = IPv4Network | IPv6Network

# Ranges a pod network must not overlap: they mean something else to every host.
RESERVED = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4"))
RESERVED6 = tuple(ipaddress.IPv6Network(n) for n in (
    "::/8", "fe80::/10", "ff00::/8", "2001:db8::/32"))
# host-local needs room in a range: a node's IPv6 subnet is at most a /120.
MAX_SUBNET_LEN6 = 120
# An IPv6-only cluster's subnets are listed and scanned like IPv4 ones: at most 2^16 of them,
# Kubernetes' own limit (node-cidr-mask-size-ipv6 at most 16 bits longer than the CIDR's).
MAX_SUBNET_BITS6 = 16


class ConfigError(ValueError):
    """A network config or lease that must not be used."""


class NewerFormat(ConfigError):
    """The datastore was written by a newer podnet than this one."""


# The datastore's format, written with the config: an agent refuses a newer one rather than
# misreading it. 1: the first releases (no field); 2: an IPv6 pod network beside the IPv4 one
# or alone (an agent of format 1 would run the first IPv4-only and misread the second). An
# IPv4-only cluster stays 1.
FORMAT = 2


def check_backend(backend: dict[str, Any]) -> None:
    """The backend type is known and each option is one it reads, with a value it accepts."""
    from podnet.backends.registry import NAMES, SPECS

    btype = backend.get("type")
    if btype not in SPECS:
        raise ConfigError(f"unknown backend {btype!r} (choose one of {', '.join(NAMES)})")
    options = SPECS[btype].options
    for key, value in backend.items():
        if key == "type":
            continue
        if key not in options:
            owners = [b for b, spec in SPECS.items() if key in spec.options]
            fix = (f"it is an option of {', '.join(owners)}" if owners else "no backend has it")
            raise ConfigError(f"backend {btype} has no option {key!r} ({fix})")
        want = options[key](value)
        if want is not None:
            raise ConfigError(f"backend option {key} = {value!r} is not valid (it takes {want})")


# A Kubernetes node name: a DNS-1123 subdomain (lower-case labels of a-z, 0-9 and '-').
_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def node_name_problem(name: object) -> str | None:
    """Why `name` is not a node name (Kubernetes' rule), or None."""
    if not isinstance(name, str) or not name:
        return "a node name is required"
    if len(name) > 253 or not _NODE_NAME.fullmatch(name):
        return (f"node name {name[:64]!r} is not a Kubernetes node name (at most 253 of a-z, "
                "0-9, '-' and '.', starting and ending with a letter or digit)")
    return None


def node_ip_problem(ip: NodeIP, config: NetworkConfig, second: bool = False) -> str | None:
    """Why `ip` cannot be a node's address in this cluster, or None. `second`: the IPv6
    address of a node whose node IP is IPv4 (a dual-stack underlay)."""
    if ip.version == 4:  # the rules below, in integers: an agent checks every lease at start
        value = int(ip)
        for first, last in config.barred4:
            if first <= value <= last:
                break
        else:
            return None
    from podnet.backends.registry import SPECS

    for network in config.networks:
        if network.version == ip.version and ip in network and config.backend_type != "l2":
            return f"node IP {ip} lies inside the pod network {network}"
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip.is_link_local:
        return f"node IP {ip} is not a unicast host address"
    for reserved in RESERVED if ip.version == 4 else RESERVED6:
        if ip in reserved:
            return f"node IP {ip} lies in the reserved range {reserved}"
    if ip.version == 6 and not second and not SPECS[config.backend_type].ipv6_underlay:
        return (f"node IP {ip} is IPv6, and the {config.backend_type} backend runs over an "
                "IPv4 underlay only (give the node's IPv4 address with --node-ip)")
    return None


@dataclass(frozen=True)
class NetworkConfig:
    # The pod network nodes lease their subnets of (a lease's key names its subnet): IPv4, or
    # IPv6 in an IPv6-only cluster.
    network: PodNetwork
    subnet_len: int
    backend: dict[str, Any] = field(default_factory=lambda: {"type": "vxlan"})
    # Dual-stack: the IPv6 pod network beside the IPv4 one; node i's IPv6 subnet is the i-th
    # /subnet_len6 of it, where its IPv4 subnet is the i-th of `network`.
    network6: IPv6Network | None = None
    subnet_len6: int = 64

    @property
    def backend_type(self) -> str:
        return str(self.backend["type"])

    @classmethod
    def make(cls, cidr: str, subnet_len: int | None, backend: dict[str, Any],
             cidr6: str | None = None, subnet_len6: int | None = None) -> NetworkConfig:
        """A config of `cidr` (IPv4; or IPv6 alone, `subnet_len` then the IPv6 one), with
        `cidr6` beside an IPv4 one for dual-stack."""
        check_backend(backend)
        if cidr6 is None and ":" in cidr:
            return cls._ipv6_only(cidr, subnet_len, backend, subnet_len6)
        network = _network(cidr, IPv4Network)
        if network.prefixlen > 28:
            raise ConfigError(f"cluster CIDR {cidr} is too small for a pod network (give /28 "
                              "or larger)")
        btype = backend["type"]
        if subnet_len is None:
            # l2 leases ranges of one shared subnet; the others a routed subnet per node.
            subnet_len = min(network.prefixlen + 8, 28) if btype == "l2" else 24
        if not network.prefixlen < subnet_len <= 30:
            raise ConfigError(f"subnet length /{subnet_len} cannot fit in {network} (it must be "
                              f"longer than /{network.prefixlen} and at most /30)")
        config = cls(network, subnet_len, dict(backend))
        if cidr6 is None:
            if subnet_len6 is not None:
                raise ConfigError("an IPv6 subnet length needs an IPv6 cluster CIDR (give one)")
            return config
        network6 = _network(cidr6, IPv6Network)
        _check_ipv6_pods(btype, "dual-stack")
        len6 = 64 if subnet_len6 is None else subnet_len6
        _check_len6(network6, len6)
        if len6 - network6.prefixlen < subnet_len - network.prefixlen:
            raise ConfigError(f"{network6} has fewer /{len6} subnets than {network} has "
                              f"/{subnet_len} ones (every node needs one of each: widen it)")
        return cls(network, subnet_len, dict(backend), network6, len6)

    @classmethod
    def _ipv6_only(cls, cidr: str, subnet_len: int | None, backend: dict[str, Any],
                   subnet_len6: int | None) -> NetworkConfig:
        if subnet_len is not None and subnet_len6 is not None and subnet_len != subnet_len6:
            raise ConfigError("an IPv6-only cluster has one subnet length (give it once, as "
                              "the IPv6 one)")
        network = _network(cidr, IPv6Network)
        _check_ipv6_pods(backend["type"], "an IPv6-only cluster")
        length = subnet_len6 or subnet_len or max(64, network.prefixlen + 8)
        _check_len6(network, length)
        if length - network.prefixlen > MAX_SUBNET_BITS6:
            raise ConfigError(f"{network} holds 2^{length - network.prefixlen} /{length} "
                              f"subnets, more than the 2^{MAX_SUBNET_BITS6} a cluster may have "
                              f"(give a longer CIDR or a shorter subnet length)")
        return cls(network, length, dict(backend))

    @property
    def networks(self) -> list[IPv4Network | IPv6Network]:
        """The pod networks, one per family of the cluster (IPv4 first)."""
        return [self.network] + ([self.network6] if self.network6 is not None else [])

    @cached_property
    def barred4(self) -> tuple[tuple[int, int], ...]:
        """The IPv4 ranges `node_ip_problem` refuses node addresses in, as (first, last):
        RESERVED (which holds every address that is not a unicast host's), and the pods'."""
        barred = [*RESERVED] + (
            [self.network] if self.network.version == 4 and self.backend_type != "l2" else [])
        return tuple((int(n.network_address), int(n.broadcast_address)) for n in barred)

    @property
    def families(self) -> list[int]:
        """The pods' address families: 4, 6 or both."""
        return [n.version for n in self.networks]

    @property
    def capacity(self) -> int:
        return 1 << (self.subnet_len - self.network.prefixlen)

    def subnet_at(self, index: int) -> PodNetwork:
        """The network's index-th subnet (made alone: a /8 of /24s has 65,536)."""
        shift = self.network.max_prefixlen - self.subnet_len
        net = int(self.network.network_address) + (index << shift)
        return (IPv4Network((net, self.subnet_len)) if self.network.version == 4
                else IPv6Network((net, self.subnet_len)))

    def subnet_index(self, subnet: PodNetwork) -> int | None:
        """The subnet's index (subnet_at's); None where it is not one of the network's."""
        if (subnet.version != self.network.version or subnet.prefixlen != self.subnet_len
                or not subnet.subnet_of(self.network)):  # type: ignore[arg-type]
            return None
        shift = self.network.max_prefixlen - self.subnet_len
        return (int(subnet.network_address) - int(self.network.network_address)) >> shift

    def free_indices(self, busy: set[str]) -> list[int]:
        """The indices of the subnets whose keys (subnet_key) are not in `busy`."""
        shift = self.network.max_prefixlen - self.subnet_len
        base = int(self.network.network_address)
        # A lease's key read as an integer, not through ipaddress' parser: a node joining a
        # /8 of 5000 nodes reads 5000 keys (30 ms).
        want = str(self.subnet_len)
        taken = set()
        for key in busy:
            address, _, length = key.partition("-")
            if length != want:
                continue
            try:
                net = _address_int(address, self.network.version)
            except ValueError:
                continue
            if net - base >= 0:
                taken.add((net - base) >> shift)
        return [i for i in range(self.capacity) if i not in taken]

    def subnet6_for(self, subnet: PodNetwork) -> IPv6Network | None:
        """The IPv6 subnet that goes with an IPv4 one: the same index in network6."""
        if self.network6 is None:
            return None
        index = (int(subnet.network_address) - int(self.network.network_address)) >> (
            self.network.max_prefixlen - self.subnet_len)
        return IPv6Network((int(self.network6.network_address)
                            + (index << (128 - self.subnet_len6)), self.subnet_len6))

    def to_json(self) -> str:
        obj: dict[str, Any] = {"format": 1, "network": str(self.network),
                               "subnetLen": self.subnet_len, "backend": self.backend}
        if self.network6 is not None:
            obj |= {"format": 2, "network6": str(self.network6),
                    "subnetLen6": self.subnet_len6}
        if self.network.version == 6:
            obj["format"] = 2
        return json.dumps(obj, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> NetworkConfig:
        try:
            obj = json.loads(raw)
            written = obj.get("format", 1)  # the first releases wrote none
            if not isinstance(written, int) or isinstance(written, bool):
                raise ConfigError(f"stored network config has format {written!r}, not a number")
            if written > FORMAT:
                raise NewerFormat(f"the datastore was written in format {written} by a newer "
                                  f"podnet; this one knows format {FORMAT}")
            len6 = obj.get("subnetLen6")
            return cls.make(obj["network"], int(obj["subnetLen"]), dict(obj["backend"]),
                            obj.get("network6"), None if len6 is None else int(len6))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"stored network config is invalid: {exc}") from None


def _check_ipv6_pods(btype: str, what: str) -> None:
    from podnet.backends.registry import SPECS

    if not SPECS[btype].dual_stack:
        raise ConfigError(f"backend {btype} carries IPv4 pods only (choose one of "
                          f"{', '.join(b for b, s in SPECS.items() if s.dual_stack)} for "
                          f"{what})")


def _check_len6(network6: IPv6Network, len6: int) -> None:
    if not network6.prefixlen < len6 <= MAX_SUBNET_LEN6:
        raise ConfigError(f"IPv6 subnet length /{len6} cannot fit in {network6} (it must "
                          f"be longer than /{network6.prefixlen} and at most "
                          f"/{MAX_SUBNET_LEN6})")


N = TypeVar("N", IPv4Network, IPv6Network)
# Each family's reserved ranges, an example, and what a CIDR of the other family means.
_FAMILY: dict[type, tuple[tuple[IPv4Network | IPv6Network, ...], str, str]] = {
    IPv4Network: (RESERVED, "10.244.0.0/16", "is not IPv4 (give an IPv4 network, and an IPv6 "
                                             "one beside it for dual-stack)"),
    IPv6Network: (RESERVED6, "fd00:10:244::/56", "makes two IPv4 cluster CIDRs (give one per "
                                                 "family, the IPv4 one first)"),
}


def _network(cidr: str, family: type[N]) -> N:
    """A cluster CIDR of `family`: well formed, and overlapping no reserved range."""
    reserved_ranges, example, other = _FAMILY[family]
    try:
        network = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise ConfigError(f"cluster CIDR {cidr!r} is malformed: {exc} (give a network "
                          f"address and prefix, e.g. {example})") from None
    if not isinstance(network, family):
        raise ConfigError(f"cluster CIDR {cidr} {other}")
    for reserved in reserved_ranges:
        if network.overlaps(reserved):
            raise ConfigError(f"cluster CIDR {cidr} overlaps the reserved range {reserved} "
                              f"(choose a private range such as {example})")
    return network


@dataclass(frozen=True)
class Lease:
    """One node's share of the cluster network, as stored under the subnet's key."""

    subnet: PodNetwork  # of config.network's family
    node: str
    node_ip: NodeIP  # the address peers reach the node at, of the underlay's family
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    subnet6: IPv6Network | None = None  # dual-stack: config.subnet6_for(subnet)
    # The node's IPv6 address beside an IPv4 node IP, where the underlay carries both.
    node_ip6: ipaddress.IPv6Address | None = None

    @classmethod
    def make(cls, config: NetworkConfig, subnet: PodNetwork, node: str,
             node_ip: NodeIP, attrs: dict[str, Any],
             node_ip6: ipaddress.IPv6Address | None = None) -> Lease:
        """A lease of `subnet`, with the IPv6 subnet that goes with it in this cluster."""
        return cls(subnet, node, node_ip, attrs, config.subnet6_for(subnet), node_ip6)

    @property
    def underlay_ips(self) -> list[NodeIP]:
        """Every underlay address of the node: its node IP, and its IPv6 one beside."""
        return [self.node_ip] + ([self.node_ip6] if self.node_ip6 is not None else [])

    def underlay_ip(self, family: int) -> NodeIP | None:
        """The node's underlay address of `family`, if it has one."""
        if self.node_ip.version == family:
            return self.node_ip
        return self.node_ip6 if family == 6 else None

    @property
    def subnets(self) -> list[PodNetwork]:
        """The node's pod subnets, one per family of the cluster."""
        return [self.subnet] + ([self.subnet6] if self.subnet6 is not None else [])

    def address(self, family: int) -> NodeIP | None:
        """The node's address of `family` (4 or 6), as a sender: its underlay address of the
        family, else its pod bridge's gateway of it (where the underlay has none)."""
        if (own := self.underlay_ip(family)) is not None:
            return own
        subnet = next((s for s in self.subnets if s.version == family), None)
        return None if subnet is None else subnet.network_address + 1

    def to_json(self) -> str:
        obj = {"subnet": str(self.subnet), "node": self.node, "nodeIP": str(self.node_ip),
               "attrs": self.attrs}
        if self.subnet6 is not None:
            obj["subnet6"] = str(self.subnet6)
        if self.node_ip6 is not None:
            obj["nodeIP6"] = str(self.node_ip6)
        return json.dumps(obj, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes, config: NetworkConfig) -> Lease:
        """Parse and validate a stored lease against the cluster config; ConfigError if bad.

        An agent reads every lease of the cluster at start: the addresses are checked on their
        integer values rather than through ipaddress' string parsers (a third of the time).
        """
        try:
            obj = json.loads(raw)
            addr, slash, plen = str(obj["subnet"]).partition("/")
            prefix = int(plen) if slash else -1
            net = _address_int(addr, config.network.version)
            raw_ip = str(obj["nodeIP"])
            node_ip: NodeIP = (ipaddress.IPv6Address(raw_ip) if ":" in raw_ip
                               else ipaddress.IPv4Address(_ipv4_int(raw_ip)))
            node = obj["node"]
            attrs = obj.get("attrs", {})
            node_ip6 = (None if obj.get("nodeIP6") is None
                        else ipaddress.IPv6Address(str(obj["nodeIP6"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"lease payload is not valid: {exc}") from None
        if (problem := node_name_problem(node)) is not None:
            raise ConfigError(f"lease has no valid node name: {problem}")
        if not isinstance(attrs, dict):
            raise ConfigError("lease attrs must be an object")
        outer, bits = config.network.prefixlen, config.network.max_prefixlen
        if (prefix != config.subnet_len or net & ((1 << (bits - prefix)) - 1)
                or net >> (bits - outer) != int(config.network.network_address) >> (bits - outer)):
            raise ConfigError(f"lease subnet {obj['subnet']} is not a /{config.subnet_len} of "
                              f"{config.network}")
        subnet = type(config.network)((net, prefix))
        if (problem := node_ip_problem(node_ip, config)) is not None:
            raise ConfigError(f"lease {problem}")
        if node_ip6 is not None and (node_ip.version == 6 or (
                problem := node_ip_problem(node_ip6, config, second=True)) is not None):
            raise ConfigError(f"lease nodeIP6: {problem or 'the node IP is IPv6 already'}")
        subnet6 = config.subnet6_for(subnet)
        if "subnet6" in obj and str(obj["subnet6"]) != str(subnet6):
            raise ConfigError(f"lease subnet6 {obj['subnet6']} is not {subnet6}, which goes "
                              f"with {subnet} in this cluster")
        return cls(subnet, node, node_ip, attrs, subnet6, node_ip6)


def _ipv4_int(text: str) -> int:
    """A dotted quad's value; ValueError for anything else (inet_aton alone takes '10.1')."""
    try:
        packed = socket.inet_aton(text) if text.count(".") == 3 else b""
    except OSError:
        packed = b""
    if len(packed) != 4 or socket.inet_ntoa(packed) != text:
        raise ValueError(f"{text!r} is not an IPv4 address")
    return int.from_bytes(packed, "big")


def _address_int(text: str, version: int) -> int:
    """An address of the family's value; ValueError for anything else."""
    return _ipv4_int(text) if version == 4 else int(ipaddress.IPv6Address(text))


def subnet_key(subnet: PodNetwork) -> str:
    """A key segment for a subnet: '/' cannot appear in one."""
    return f"{subnet.network_address}-{subnet.prefixlen}"
