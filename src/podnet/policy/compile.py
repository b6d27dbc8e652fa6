"""One node's NetworkPolicy enforcement as one nftables table (`inet podnet_policy`), written
at once (pure: text out).

Cost grows with policies and selected peers, not with policies x pods:
- each distinct peer (a selector's pods, an ipBlock) is one set of addresses, shared by every
  rule that names the same addresses;
- the node's pods that the same policies select (with the same named ports) share one chain
  per direction holding those policies' rules; a verdict map keyed by pod address jumps to
  it, so a packet takes one map lookup and its group's rules, never a walk over every policy;
- a pod selected by no policy of a direction has no entry in that direction's map: one
  lookup, and on.

Replies of allowed connections pass (`ct state established,related`): connection tracking is
on for the policed pods' traffic and off (`notrack`) for pod-to-pod traffic of pods no policy
selects, whose packets are never judged. A pod not yet judged is held by podnet.policy.pending.
Traffic between a pod and its own node never crosses the forward hook (kubelet's probes stay
allowed, as Kubernetes requires).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from podnet.firewall import libnft
from podnet.policy.model import (
    EGRESS,
    INGRESS,
    IP,
    Cluster,
    IPBlock,
    Network,
    Peer,
    Pod,
    Policy,
    Port,
)

TABLE = "podnet_policy"
KEYWORD = {4: "ip", 6: "ip6"}
ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
NFT_PROTO = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
# The forward hook's order: a pod's egress is judged, then the destination's ingress; both
# before podnet's own forward accept (priority filter - 1), though any drop is final anyway.
EGRESS_PRIORITY, INGRESS_PRIORITY = "filter - 3", "filter - 2"


@dataclass(frozen=True)
class Elements:
    """A set's family, whether it holds networks (intervals), and its elements."""
    family: int
    interval: bool
    items: tuple[str, ...]

    @property
    def kind(self) -> tuple[int, bool]:
        return self.family, self.interval


@dataclass
class Compiled:
    """One node's table, as data: `table` writes it whole, `update` the difference."""
    sets: dict[str, Elements]
    maps: dict[str, dict[str, str]]  # in4, out4, in6, out6: pod address -> its group's chain
    chains: dict[str, list[str]]  # each group's rules
    base: list[str]  # the hooked chains, as written
    policed: set[IP] = field(default_factory=set)  # this node's pods some policy isolates
    rules: int = 0  # accept rules written, for the metrics


class _Builder:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.index = cluster.index()
        self.sets: dict[tuple[int, bool, tuple[str, ...]], str] = {}  # content -> name
        self.chains: dict[str, list[str]] = {}
        self.rules = 0
        self._peer_sets: dict[tuple[str | None, Peer, int], str | None] = {}

    def address_set(self, family: int, items: Sequence[str], interval: bool) -> str | None:
        """The name of the set holding these addresses (or networks), made once per content;
        None where there are none."""
        if not items:
            return None
        key = (family, interval, tuple(sorted(set(items))))
        if key not in self.sets:
            self.sets[key] = f"s{len(self.sets)}"
        return self.sets[key]

    def pods_of(self, policy: Policy, peer: Peer | None) -> list[Pod]:
        if peer is None:
            return self.cluster.pods
        if peer.ip_block is not None:
            block = peer.ip_block
            return [p for p in self.cluster.pods if any(block.contains(ip) for ip in p.ips)]
        return self.index.pods_of(policy, peer)

    def peer_sets(self, policy: Policy, peer: Peer, family: int) -> str | None:
        """The set of a peer's addresses of `family` (once per distinct peer)."""
        key = (policy.namespace if peer.namespace_selector is None else None, peer, family)
        if key not in self._peer_sets:
            if peer.ip_block is not None:
                name = self.address_set(family, _block(peer.ip_block, family), interval=True)
            else:
                name = self.address_set(family, [str(ip) for p in self.pods_of(policy, peer)
                                                 for ip in p.ips if ip.version == family],
                                        False)
            self._peer_sets[key] = name
        return self._peer_sets[key]

    def chain(self, name: str, lines: list[str]) -> str:
        self.chains[name] = lines
        return name

    def ingress_chain(self, name: str, policies: list[Policy],
                      ports: Mapping[str, tuple[str, int]]) -> str:
        lines: list[str] = []
        for policy in policies:
            for rule in policy.ingress:
                clauses = _port_clauses(rule.ports, ports)
                if clauses is None:
                    continue  # named ports this pod does not have: the rule matches nothing
                for match in self._peer_matches(policy, rule.peers, "saddr"):
                    lines += [f"{match}{c}accept" for c in clauses]
        return self._finish(name, lines)

    def _finish(self, name: str, lines: list[str]) -> str:
        """The chain of these accept rules (each once), then the drop."""
        unique = list(dict.fromkeys(lines))
        self.rules += len(unique)
        return self.chain(name, [*unique, "counter drop"])

    def egress_chain(self, name: str, policies: list[Policy]) -> str:
        lines: list[str] = []
        for policy in policies:
            for rule in policy.egress:
                numbered = [p for p in rule.ports if not isinstance(p.port, str)]
                named = [p for p in rule.ports if isinstance(p.port, str)]
                if numbered or not rule.ports:
                    clauses = _port_clauses(tuple(numbered), {}) or [""]
                    for match in self._peer_matches(policy, rule.peers, "daddr"):
                        lines += [f"{match}{c}accept" for c in clauses]
                for port in named:  # resolved on each destination pod
                    lines += self._named_egress(policy, rule.peers, port)
        return self._finish(name, lines)

    def _peer_matches(self, policy: Policy, peers: tuple[Peer, ...], field: str) -> list[str]:
        """Address matches, one per peer and family ("" for every address)."""
        if not peers:
            return [""]
        out = []
        for peer in peers:
            for family in (4, 6):
                name = self.peer_sets(policy, peer, family)
                if name is not None:
                    out.append(f"{KEYWORD[family]} {field} @{name} ")
        return out

    def _named_egress(self, policy: Policy, peers: tuple[Peer, ...], port: Port) -> list[str]:
        by_number: dict[tuple[int, int], list[str]] = {}
        candidates = ([p for peer in peers for p in self.pods_of(policy, peer)] if peers
                      else self.cluster.pods)
        for pod in candidates:
            got = pod.ports.get(str(port.port))
            if got is None or got[0] != port.protocol:
                continue
            for ip in pod.ips:
                if not peers or any(self.cluster.peer_matches(policy, peer, pod, ip)
                                    for peer in peers):
                    by_number.setdefault((ip.version, got[1]), []).append(str(ip))
        out = []
        for (family, number), ips in sorted(by_number.items()):
            name = self.address_set(family, ips, False)
            out.append(f"{KEYWORD[family]} daddr @{name} meta l4proto "
                       f"{NFT_PROTO[port.protocol]} th dport {number} accept")
        return out


def _block(block: IPBlock, family: int) -> list[str]:
    """An ipBlock's networks, its exceptions cut out."""
    if block.cidr.version != family:
        return []
    nets: list[Network] = [block.cidr]
    for hole in block.excepts:
        pieces: list[Network] = []
        for net in nets:
            if hole.subnet_of(net):  # type: ignore[arg-type]
                pieces += net.address_exclude(hole)  # type: ignore[arg-type]
            else:
                pieces.append(net)
        nets = pieces
    return sorted(str(n) for n in nets)


def _port_clauses(ports: tuple[Port, ...], named: Mapping[str, tuple[str, int]]
                  ) -> list[str] | None:
    """The rule's port matches ([""]: any traffic); None where every port is a name the pod
    does not have (the rule then matches nothing)."""
    if not ports:
        return [""]
    out = []
    for port in ports:
        proto = NFT_PROTO[port.protocol]
        if port.port is None:
            out.append(f"meta l4proto {proto} ")
        elif isinstance(port.port, str):
            got = named.get(port.port)
            if got is not None and got[0] == port.protocol:
                out.append(f"meta l4proto {proto} th dport {got[1]} ")
        elif port.end_port is not None and port.end_port != port.port:
            out.append(f"meta l4proto {proto} th dport {port.port}-{port.end_port} ")
        else:
            out.append(f"meta l4proto {proto} th dport {port.port} ")
    return out or None


def compile_node(cluster: Cluster, local: list[Pod], networks: Sequence[Network]) -> Compiled:
    """The table for a node whose pods are `local`, in a cluster of pod `networks`."""
    b = _Builder(cluster)
    maps: dict[str, dict[str, str]] = {f"{d}{f}": {} for d in ("in", "out") for f in (4, 6)}
    groups: dict[tuple[str, tuple[object, ...]], str] = {}
    policed: set[IP] = set()
    for pod in local:
        for direction, tag in ((INGRESS, "in"), (EGRESS, "out")):
            policies = b.index.selecting(pod, direction)
            if not policies:
                continue
            key = (tag, (tuple(p.key for p in policies),
                         tuple(sorted(pod.ports.items())) if tag == "in" else ()))
            if key not in groups:
                name = f"{tag}{len(groups)}"
                groups[key] = (b.ingress_chain(name, policies, pod.ports) if tag == "in"
                               else b.egress_chain(name, policies))
            for ip in pod.ips:
                maps[f"{tag}{ip.version}"][str(ip)] = groups[key]
                policed.add(ip)
    sets = {name: Elements(family, interval, content)
            for (family, interval, content), name in b.sets.items()}
    for family in (4, 6):
        sets[f"policed{family}"] = Elements(family, False, tuple(sorted(
            str(ip) for ip in policed if ip.version == family)))
    base: list[str] = []
    for hook, priority, end, tag in (("egress", EGRESS_PRIORITY, "saddr", "out"),
                                     ("ingress", INGRESS_PRIORITY, "daddr", "in")):
        body = [f"type filter hook forward priority {priority}; policy accept;",
                "ct state established,related accept"]
        body += [f"{KEYWORD[f]} {end} vmap @{tag}{f}" for f in (4, 6)]
        base += [f"  chain {hook} {{", *(f"    {line}" for line in body), "  }"]
    # Pod-to-pod traffic no policy judges skips connection tracking (it is never translated:
    # docs/benchmarks.md); a policed pod's is tracked, so that replies are known.
    for chain, hook in (("notrack_in", "prerouting"), ("notrack_out", "output")):
        body = [f"type filter hook {hook} priority raw; policy accept;"]
        for net in networks:
            kw, f = KEYWORD[net.version], net.version
            body.append(f"{kw} saddr {net} {kw} daddr {net} {kw} saddr != @policed{f} "
                        f"{kw} daddr != @policed{f} notrack")
        base += [f"  chain {chain} {{", *(f"    {line}" for line in body), "  }"]
    return Compiled(sets, maps, b.chains, base, policed, b.rules)


def _items(items: Iterable[str]) -> str:
    return f"{{ {', '.join(items)} }}"


def table(compiled: Compiled) -> str:
    """The whole table, replacing what is there at once (created first, so that deleting
    it cannot fail)."""
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    for name, e in compiled.sets.items():
        flags = " flags interval;" if e.interval else ""
        elements = f" elements = {_items(e.items)}" if e.items else ""
        lines.append(f"  set {name} {{ type {ADDR_TYPE[e.family]};{flags}{elements} }}")
    for name, entries in compiled.maps.items():
        elements = (f" elements = {_items(f'{ip} : jump {c}' for ip, c in sorted(entries.items()))}"
                    if entries else "")
        lines.append(f"  map {name} {{ type {ADDR_TYPE[int(name[-1])]} : verdict;{elements} }}")
    for name, body in compiled.chains.items():
        lines += [f"  chain {name} {{", *(f"    {line}" for line in body), "  }"]
    lines += [*compiled.base, "}"]
    return "\n".join(lines) + "\n"


def update(old: Compiled | None, new: Compiled) -> str:
    """What turns the table `old` was written from into `new`'s: where they differ in
    elements only (a pod came, went or changed its labels), those elements, added and
    deleted in one transaction; else the whole table anew. Empty: nothing to do."""
    def kinds(c: Compiled) -> dict[str, tuple[int, bool]]:
        return {n: e.kind for n, e in c.sets.items()}

    if old is None or old.chains != new.chains or old.base != new.base or kinds(old) != kinds(new):
        return table(new)
    t = f"inet {TABLE}"
    lines = []
    for name, e in new.sets.items():
        have, want = set(old.sets[name].items), set(e.items)
        if gone := sorted(have - want):
            lines.append(f"delete element {t} {name} {_items(gone)}")
        if came := sorted(want - have):
            lines.append(f"add element {t} {name} {_items(came)}")
    for name, entries in new.maps.items():
        had = old.maps[name]
        if gone := sorted(ip for ip, c in had.items() if entries.get(ip) != c):
            lines.append(f"delete element {t} {name} {_items(gone)}")
        if came := sorted(ip for ip, c in entries.items() if had.get(ip) != c):
            lines.append(f"add element {t} {name} "
                         f"{_items(f'{ip} : jump {entries[ip]}' for ip in came)}")
    return "\n".join(lines) + "\n" if lines else ""


def remove() -> None:
    """Take the table away (the node leaves the cluster)."""
    with contextlib.suppress(libnft.NftError):
        libnft.run(f"delete table inet {TABLE}\n")
