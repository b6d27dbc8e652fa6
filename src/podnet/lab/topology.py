"""The lab described as data: names and addresses of everything it builds (pure logic)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from podnet.backends import registry
from podnet.errors import UserError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,15}")
CLUSTER_CIDR = "10.244.0.0/16"
CLUSTER_CIDR6 = "fd00:10:244::/56"  # dual-stack labs: node i's /64 goes with its IPv4 /24
# The pods' address families of each --ip-family.
FAMILIES = {"ipv4": [4], "dual": [4, 6], "ipv6": [6]}
IP_FAMILIES = tuple(FAMILIES)
UNDERLAY_FAMILIES = ("ipv4", "ipv6")
CONTROL_NET = ipaddress.IPv4Network("192.168.99.0/24")  # routed underlay: etcd's subnet
CONTROL_NET6 = ipaddress.IPv6Network("fd00:192:168:99::/64")  # the same, IPv6 only
SWITCH_NET = ipaddress.IPv4Network("192.168.100.0/24")
SWITCH_NET6 = ipaddress.IPv6Network("fd00:192:168:100::/64")  # the IPv6 underlay's switch
# A routed underlay's links carry IPv6 as well where pods have it: node i's fd00:192:168:10i::/64.
ROUTED_NET6 = ipaddress.IPv6Network("fd00:192:168::/48")
ETCD_PORT = 2379
MAX_NODES = 50
MAX_PODS_PER_NODE = 50
MAX_ETCD_MEMBERS = 5


def check_lab_name(name: str) -> str:
    """The one rule for a lab's name, whichever command it comes to; the name."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = name[:40] if isinstance(name, str) else name
        raise UserError(f"lab name {shown!r} is not valid",
                        "use 1-16 of a-z, 0-9 and '-', starting with a letter or digit")
    return name


def url_host(ip: str) -> str:
    """An address as a URL's host: IPv6 in brackets."""
    return f"[{ip}]" if ":" in ip else ip


def netns_prefix(lab: str) -> str:
    return f"pnl-{lab}-"


class _InLab:
    name: str

    def netns(self, lab: str) -> str:
        """Its namespace: the lab's prefix and its name."""
        return f"{netns_prefix(lab)}{self.name}"


@dataclass
class PodSpec(_InLab):
    name: str  # the lab's (its namespace's, `lab exec`'s)
    node: str
    ip: str = ""  # its IPv4 address
    ips: list[str] = field(default_factory=list)  # every address, one per family
    # Who Kubernetes would say it is (NetworkPolicy selects by these): its namespace, its
    # name there (empty: the lab's) and its labels.
    namespace: str = "default"
    pod_name: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def k8s_name(self) -> str:
        return self.pod_name or self.name

    @property
    def k8s_key(self) -> str:
        return f"{self.namespace}/{self.k8s_name}"


@dataclass
class NodeSpec(_InLab):
    name: str
    index: int
    agent_pid: int = 0
    mounts_pid: int = 0  # an agent from the image: what holds the node's mount namespace
    # Another podnet's source tree (its src/) the agent runs from, e.g. the previous release's;
    # empty: this podnet.
    agent_src: str = ""


@dataclass
class Topology:
    name: str
    backend: str
    underlay: str = "switch"  # or "routed"
    cidr: str = CLUSTER_CIDR
    # "dual": pods get an IPv6 address of cidr6 as well; "ipv6": of cidr6 alone
    ip_family: str = "ipv4"
    cidr6: str = CLUSTER_CIDR6
    # The nodes' and etcd's addresses: IPv4, or IPv6 only (SWITCH_NET6), whatever the pods'.
    underlay_family: str = "ipv4"
    nodes: list[NodeSpec] = field(default_factory=list)
    pods: list[PodSpec] = field(default_factory=list)
    etcd_pids: dict[str, int] = field(default_factory=dict)  # by member
    router_pid: int = 0
    reconcile_interval: float = 2.0
    gateway_mode: str = "bgp"  # the gateway backend: BIRD on the router, or `agent --role router`
    fast_path: bool = True  # the eBPF fast path (backend option `fastPath`)
    # Flows steered over the CPUs where a veth receives them: the lab's links (as a NIC's
    # RSS) and the agents' pods (`podnet agent --receive-steering`).
    receive_steering: bool = False
    # Every namespace this lab made, recorded before it is made: what `down` removes.
    netns_made: list[str] = field(default_factory=list)
    # Pods a reboot ended without a CNI DEL: their names (container IDs) are not given again,
    # as a runtime gives re-made sandboxes new IDs (IPAM still holds the old ones).
    retired_pods: list[str] = field(default_factory=list)
    etcd_tls: bool = False  # etcd with TLS and client certificates, as in production
    etcd_members: int = 1  # etcd's members, each in a namespace of its own (cp, cp2, ...)
    # etcd's authentication on: the lab as root, each node's agent as its own user.
    etcd_auth: bool = False
    # Agents run from this image as the Kubernetes DaemonSet runs them (needs etcd_tls).
    agent_image: str = ""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """The topology can be built (again after options were set on it)."""
        check_lab_name(self.name)
        if self.underlay not in ("switch", "routed"):
            raise UserError(f"underlay {self.underlay!r} is not known", "use switch or routed")
        try:
            spec = registry.spec(self.backend)
        except KeyError as exc:
            raise UserError(exc.args[0], "see `podnet lab up --help`") from None
        if not 1 <= self.etcd_members <= MAX_ETCD_MEMBERS:
            raise UserError(f"{self.etcd_members} etcd members are out of range",
                            f"give 1 to {MAX_ETCD_MEMBERS}")
        if self.etcd_members > 1 and self.underlay != "switch":
            raise UserError("several etcd members need the switch underlay",
                            "use --underlay switch")
        if self.agent_image and not self.etcd_tls:
            raise UserError("the DaemonSet's agent takes etcd's client certificate",
                            "add --etcd-tls")
        if self.ip_family not in IP_FAMILIES:
            raise UserError(f"IP family {self.ip_family!r} is not known",
                            f"use one of {', '.join(IP_FAMILIES)}")
        if self.ip_family != "ipv4" and not spec.dual_stack:
            raise UserError(f"the {self.backend} backend carries IPv4 pods only",
                            "use one of " + ", ".join(
                                n for n, s in registry.SPECS.items() if s.dual_stack)
                            + " for IPv6 pods")
        if self.underlay_family not in UNDERLAY_FAMILIES:
            raise UserError(f"underlay family {self.underlay_family!r} is not known",
                            f"use one of {', '.join(UNDERLAY_FAMILIES)}")
        if self.underlay_family == "ipv6" and not spec.ipv6_underlay:
            raise UserError(f"the {self.backend} backend runs over an IPv4 underlay only",
                            "use one of " + ", ".join(
                                n for n, s in registry.SPECS.items() if s.ipv6_underlay)
                            + " over an IPv6 underlay")
        if self.agent_image and self.etcd_auth:
            raise UserError("the DaemonSet's agents are one user, by their certificate; "
                            "per-node users are for agents started by hand or by systemd",
                            "drop --etcd-auth or --agent-image")
        if spec.routed_by_gateway and self.underlay != "routed":
            raise UserError(f"the {self.backend} backend needs a router",
                            "use --underlay routed")

    @classmethod
    def make(cls, name: str, backend: str, nodes: int, pods_per_node: int,
             underlay: str = "switch") -> Topology:
        if not 0 <= nodes <= MAX_NODES:
            raise UserError(f"{nodes} nodes are too many or too few",
                            f"a lab has up to {MAX_NODES} nodes")
        if not 0 <= pods_per_node <= MAX_PODS_PER_NODE:
            raise UserError(f"{pods_per_node} pods per node is out of range",
                            f"give 0 to {MAX_PODS_PER_NODE}")
        topo = cls(name=name, backend=backend, underlay=underlay)
        for _ in range(nodes):
            node = topo.new_node()
            for _ in range(pods_per_node):
                topo.new_pod(node.name)
        return topo

    def new_node(self) -> NodeSpec:
        index = max((n.index for n in self.nodes), default=0) + 1
        node = NodeSpec(f"node{index}", index)
        self.nodes.append(node)
        return node

    def new_pod(self, node: str, namespace: str = "default", pod_name: str = "",
                labels: dict[str, str] | None = None) -> PodSpec:
        """A pod on `node`; as Kubernetes would name it: `namespace`/`pod_name` (default: the
        lab's name) with `labels`, all validated as the API server would."""
        from podnet.policy import k8s

        if not any(n.name == node for n in self.nodes):
            raise UserError(f"no node {node!r} in lab {self.name}",
                        f"nodes: {', '.join(n.name for n in self.nodes) or 'none'}")
        try:
            k8s.check_dns_label(namespace, "--namespace")
            if pod_name:
                k8s.check_name(pod_name, "--pod-name")
            labels = k8s.labels(labels or {}, "--labels")
        except k8s.Invalid as exc:
            raise UserError(str(exc), "give a DNS label for the namespace, a DNS subdomain "
                            "for the name and KEY=VALUE labels") from None
        taken = {p.name for p in self.pods} | set(self.retired_pods)
        j = 1
        while f"{node}-p{j}" in taken:
            j += 1
        pod = PodSpec(f"{node}-p{j}", node, namespace=namespace, pod_name=pod_name,
                      labels=dict(labels))
        if any(p.k8s_key == pod.k8s_key for p in self.pods):
            raise UserError(f"lab {self.name} has a pod {pod.k8s_key} already",
                            "give another --pod-name or --namespace")
        self.pods.append(pod)
        return pod

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise UserError(f"no node {name!r} in lab {self.name}",
                        f"nodes: {', '.join(n.name for n in self.nodes) or 'none'}")

    # -- addresses -----------------------------------------------------------------------------
    @property
    def switch_net(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return SWITCH_NET6 if self.underlay_family == "ipv6" else SWITCH_NET

    @property
    def control_net(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """A routed underlay's link between the router (first address) and etcd."""
        return CONTROL_NET6 if self.underlay_family == "ipv6" else CONTROL_NET

    @property
    def control_router(self) -> str:
        return str(self.control_net.network_address + 1)

    @property
    def etcd_ip(self) -> str:
        net = self.switch_net if self.underlay == "switch" else self.control_net
        return str(net.network_address + 2)

    @property
    def etcd_pid(self) -> int:
        """The first member's process (the only one of a single-member lab)."""
        return self.etcd_pids.get("cp", 0)

    @property
    def etcd_names(self) -> list[str]:
        return ["cp", *(f"cp{i}" for i in range(2, self.etcd_members + 1))]

    def etcd_member_ip(self, member: str) -> str:
        """cp at the usual place, further members after it (on the switch: nodes are at .11+)."""
        if member == "cp":
            return self.etcd_ip
        return str(self.switch_net.network_address + 2 + self.etcd_names.index(member))

    def etcd_member_url(self, member: str, port: int = ETCD_PORT, scheme: str = "") -> str:
        """A member's client URL (or, with a port and scheme, its peer URL)."""
        scheme = scheme or ("https" if self.etcd_tls else "http")
        return f"{scheme}://{url_host(self.etcd_member_ip(member))}:{port}"

    @property
    def etcd_url(self) -> str:
        """What `--etcd` takes: every member's URL, comma-separated."""
        return ",".join(self.etcd_member_url(m) for m in self.etcd_names)

    def node_net(self, node: NodeSpec) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        if self.underlay == "switch":
            return self.switch_net
        if self.underlay_family == "ipv6":
            return self.node_net6(node)
        return ipaddress.IPv4Network(f"192.168.{100 + node.index}.0/24")

    @property
    def families(self) -> list[int]:
        """The pods' address families."""
        return FAMILIES[self.ip_family]

    @property
    def cidrs(self) -> list[str]:
        """The pod networks, one per family (`cluster init --cidr` each)."""
        return [{4: self.cidr, 6: self.cidr6}[f] for f in self.families]

    @property
    def routed_ipv6(self) -> bool:
        """The router's IPv4 links carry IPv6 beside it (IPv6 pods behind a router)."""
        return (self.underlay == "routed" and self.underlay_family == "ipv4"
                and 6 in self.families)

    @property
    def router_sessions(self) -> list[tuple[str, list[str]]]:
        """The router's BGP sessions: (the nodes' range, the pod networks it learns there).
        Over an IPv6-only underlay one session carries both families (RFC 8950)."""
        if self.underlay_family == "ipv6":
            return [(str(ROUTED_NET6), self.cidrs)]
        ranges = {4: "192.168.0.0/16", 6: str(ROUTED_NET6)}
        return [(ranges[f], [cidr]) for f, cidr in zip(self.families, self.cidrs, strict=True)]

    def node_net6(self, node: NodeSpec) -> ipaddress.IPv6Network:
        # Its fourth group reads as the IPv4 link's third octet: 192.168.102.0/24 and
        # fd00:192:168:102::/64.
        group = int(str(100 + node.index), 16)
        return ipaddress.IPv6Network((int(ROUTED_NET6.network_address) + (group << 64), 64))

    def node_ips(self, node: NodeSpec) -> list[str]:
        """The node's underlay addresses: node_ip, and its IPv6 one on an IPv6 routed link."""
        net6 = [str(self.node_net6(node).network_address + 2)] if self.routed_ipv6 else []
        return [self.node_ip(node), *net6]

    def node_ip(self, node: NodeSpec) -> str:
        if self.underlay == "switch":
            return str(self.switch_net.network_address + 10 + node.index)
        return str(self.node_net(node).network_address + 2)

    @property
    def switch_gateway(self) -> str:
        """A default gateway on the switch that nothing answers at."""
        return str(self.switch_net.network_address + 1)

    def gateway(self, node: NodeSpec) -> str | None:
        """The node's default gateway: the router on a routed underlay."""
        return None if self.underlay == "switch" else str(self.node_net(node).network_address
                                                          + 1)

    @property
    def netns_prefix(self) -> str:
        return netns_prefix(self.name)

    def namespaces(self) -> list[str]:
        p = netns_prefix(self.name)
        core = [p + "sw"] if self.underlay == "switch" else [p + "rt"]
        return [*core, *(p + m for m in self.etcd_names),
                *(n.netns(self.name) for n in self.nodes),
                *(pod.netns(self.name) for pod in self.pods)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Topology:
        topo = cls(name=obj["name"], backend=obj["backend"], underlay=obj["underlay"],
                   cidr=obj["cidr"], ip_family=obj.get("ip_family", "ipv4"),
                   cidr6=obj.get("cidr6", CLUSTER_CIDR6),
                   underlay_family=obj.get("underlay_family", "ipv4"),
                   etcd_pids=dict(obj.get("etcd_pids", {"cp": obj.get("etcd_pid", 0)})),
                   etcd_members=obj.get("etcd_members", 1),
                   router_pid=obj.get("router_pid", 0),
                   reconcile_interval=obj.get("reconcile_interval", 2.0),
                   gateway_mode=obj.get("gateway_mode", "bgp"),
                   fast_path=obj.get("fast_path", True),
                   receive_steering=obj.get("receive_steering", False),
                   netns_made=list(obj.get("netns_made", [])),
                   retired_pods=list(obj.get("retired_pods", [])),
                   etcd_tls=obj.get("etcd_tls", False),
                   etcd_auth=obj.get("etcd_auth", False),
                   agent_image=obj.get("agent_image", ""))
        topo.nodes = [NodeSpec(**n) for n in obj["nodes"]]
        topo.pods = [PodSpec(**p) for p in obj["pods"]]
        return topo
