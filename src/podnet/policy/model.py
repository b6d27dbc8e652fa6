"""NetworkPolicy as podnet holds it (networking.k8s.io/v1 semantics), with the namespaces and
pods it selects, and the one evaluator of what a policy set allows (pure logic).

The evaluator is the truth both enforcement (podnet.policy.compile) and `podnet verify` answer
to: for a connection from a source to a destination on a protocol and port, whether every
policy layer in its way lets it through, and which policies decided.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
INGRESS, EGRESS = "Ingress", "Egress"
PROTOCOLS = ("TCP", "UDP", "SCTP")
DEFAULT_NAMESPACE = "default"  # a pod whose runtime named no namespace


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry."""
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class Selector:
    """A label selector: every matchLabels pair and every expression must hold; the empty
    selector selects everything."""
    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.expressions))

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.expressions


@dataclass(frozen=True)
class IPBlock:
    cidr: Network
    excepts: tuple[Network, ...] = ()

    def contains(self, ip: IP) -> bool:
        return (ip.version == self.cidr.version and ip in self.cidr
                and not any(ip in e for e in self.excepts))


@dataclass(frozen=True)
class Peer:
    """A `from`/`to` entry: pods by selector (namespace and pod, ANDed when both are given;
    a pod selector alone: the policy's namespace), or addresses by ipBlock."""
    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class Port:
    protocol: str = "TCP"
    port: int | str | None = None  # None: every port of the protocol; str: a named port
    end_port: int | None = None

    def matches(self, protocol: str, port: int, named: Mapping[str, tuple[str, int]]) -> bool:
        """`named`: the destination pod's named ports (name -> (protocol, number))."""
        if protocol != self.protocol:
            return False
        if self.port is None:
            return True
        if isinstance(self.port, str):
            return named.get(self.port) == (protocol, port)
        return self.port <= port <= (self.end_port or self.port)


@dataclass(frozen=True)
class Rule:
    """An ingress or egress rule: empty `peers` matches every peer, empty `ports` every
    port."""
    peers: tuple[Peer, ...] = ()
    ports: tuple[Port, ...] = ()


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    pod_selector: Selector
    types: tuple[str, ...]  # the directions it isolates the selected pods in
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == INGRESS else self.egress


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    ips: tuple[IP, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, tuple[str, int]] = field(default_factory=dict)  # named ports
    node: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Cluster:
    """What the evaluator reads: the policies, each namespace's labels, the pods."""
    policies: list[Policy] = field(default_factory=list)
    namespaces: dict[str, Mapping[str, str]] = field(default_factory=dict)
    pods: list[Pod] = field(default_factory=list)

    def index(self) -> Index:
        """Pods by namespace and label, policies by namespace: a compiler's lookups cost
        what they find, not the cluster's size (build anew after a change)."""
        return Index(self)

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        # As the API server labels every namespace with its own name.
        return {**self.namespaces.get(namespace, {}),
                "kubernetes.io/metadata.name": namespace}

    def selecting(self, pod: Pod, direction: str) -> list[Policy]:
        """The policies that isolate `pod` in `direction`."""
        return [p for p in self.policies if direction in p.types
                and p.namespace == pod.namespace and p.pod_selector.matches(pod.labels)]

    def peer_matches(self, policy: Policy, peer: Peer, other: Pod | None, ip: IP) -> bool:
        """Whether the peer entry of `policy` matches the other end (a pod, or only an
        address)."""
        if peer.ip_block is not None:
            return peer.ip_block.contains(ip)
        if other is None:
            return False
        if peer.namespace_selector is None:
            in_namespace = other.namespace == policy.namespace
        else:
            in_namespace = peer.namespace_selector.matches(
                self.namespace_labels(other.namespace))
        return in_namespace and (peer.pod_selector is None
                                 or peer.pod_selector.matches(other.labels))

    def layer(self, pod: Pod, direction: str, other: Pod | None, ip: IP, protocol: str,
              port: int, named: Mapping[str, tuple[str, int]]) -> Verdict:
        """One end's verdict: `pod`'s policies of `direction` on traffic with the other end
        (`other`, at `ip`) to `port`."""
        policies = self.selecting(pod, direction)
        if not policies:
            return Verdict(True, ())
        allowing = tuple(p.key for p in policies for r in p.rules(direction)
                         if (not r.peers or any(self.peer_matches(p, peer, other, ip)
                                                for peer in r.peers))
                         and (not r.ports or any(x.matches(protocol, port, named)
                                                 for x in r.ports)))
        if allowing:
            return Verdict(True, tuple(dict.fromkeys(allowing)))
        return Verdict(False, tuple(p.key for p in policies))

    def allowed(self, src: Pod | IP, dst: Pod | IP, protocol: str, port: int,
                family: int) -> Verdict:
        """A new connection from `src` to `dst` (pods, or addresses beyond them): the
        source's egress and the destination's ingress must both allow it. The verdict names
        the policies that allowed it, or those that isolated the end that denied it."""
        src_pod = src if isinstance(src, Pod) else None
        dst_pod = dst if isinstance(dst, Pod) else None
        src_ip = _ip_of(src, family)
        dst_ip = _ip_of(dst, family)
        named = dst_pod.ports if dst_pod is not None else {}
        out = Verdict(True, ())
        if src_pod is not None:
            out = self.layer(src_pod, EGRESS, dst_pod, dst_ip, protocol, port, named)
            if not out.allowed:
                return out
        if dst_pod is not None:
            inner = self.layer(dst_pod, INGRESS, src_pod, src_ip, protocol, port, named)
            if not inner.allowed:
                return inner
            out = Verdict(True, out.policies + inner.policies)
        return out


class Index:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.by_namespace: dict[str, list[Pod]] = {}
        self.by_label: dict[tuple[str, str], set[int]] = {}
        self.policies: dict[str, list[Policy]] = {}
        for i, pod in enumerate(cluster.pods):
            self.by_namespace.setdefault(pod.namespace, []).append(pod)
            for item in pod.labels.items():
                self.by_label.setdefault(item, set()).add(i)
        for policy in cluster.policies:
            self.policies.setdefault(policy.namespace, []).append(policy)
        self._peers: dict[tuple[str | None, Peer], list[Pod]] = {}

    def selecting(self, pod: Pod, direction: str) -> list[Policy]:
        """Cluster.selecting, by the pod's namespace's policies only."""
        return [p for p in self.policies.get(pod.namespace, ()) if direction in p.types
                and p.pod_selector.matches(pod.labels)]

    def pods_of(self, policy: Policy, peer: Peer) -> list[Pod]:
        """The pods a selector peer of `policy` matches (once per distinct peer)."""
        key = (policy.namespace if peer.namespace_selector is None else None, peer)
        if key not in self._peers:
            if peer.namespace_selector is None:
                namespaces = [policy.namespace]
            else:
                # Only namespaces with pods can give pods: a cluster of 100,000 empty
                # namespaces costs nothing here.
                selector = peer.namespace_selector
                namespaces = [n for n in sorted(self.by_namespace)
                              if selector.matches(self.cluster.namespace_labels(n))]
            allowed = set(namespaces)
            pods = self.cluster.pods
            sel = peer.pod_selector
            if sel is not None and sel.match_labels:
                hits = set.intersection(*(self.by_label.get(item, set())
                                          for item in sel.match_labels))
                found = [pods[i] for i in sorted(hits) if pods[i].namespace in allowed]
            else:
                found = [p for n in namespaces for p in self.by_namespace.get(n, ())]
            if sel is not None:
                found = [p for p in found if sel.matches(p.labels)]
            self._peers[key] = found
        return self._peers[key]


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    policies: tuple[str, ...]  # the policies that allowed it, or that isolated and denied


def _ip_of(end: Pod | IP, family: int) -> IP:
    if isinstance(end, Pod):
        return next(ip for ip in end.ips if ip.version == family)
    return end

