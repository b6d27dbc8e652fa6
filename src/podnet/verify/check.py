"""The checks: every ordered pair of pod->pod, node->pod and pod->node, by ICMP and TCP, with
the source the receiver saw; each pod's own address; full-MTU packets with DF between nodes.
A failure is traced to what is missing on the path (diagnose.py).

Where NetworkPolicies hold, each pair is held to its expected verdict (an `Expect`: ICMP, TCP
on the echo port, and each port a policy names, by its protocol: TCP, UDP or SCTP): an allowed
pair must connect, a denied one must not, and a disagreement names the policies that
decided."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from podnet.netlink import netns
from podnet.verify import probes
from podnet.verify.diagnose import explain, lab_lacks


@dataclass(frozen=True)
class Endpoint:
    name: str
    kind: str  # "pod" or "node"
    netns: str  # path
    ip: str
    node: str


# What policy says of a new connection from one endpoint to another (protocol, port): allowed,
# and the policies that decided (allowed it, or isolated the end that denies it).
Expect = Callable[[Endpoint, Endpoint, str, int], tuple[bool, tuple[str, ...]]]
# A port verify probes besides the echo port: protocol (TCP, UDP, SCTP) and number.
Probe = tuple[str, int]


def probe_key(probe: Probe) -> str:
    """How a result names a probed port: `UDP/53`."""
    return f"{probe[0]}/{probe[1]}"


def _probe_of(key: str) -> Probe:
    protocol, _, number = key.partition("/")
    return protocol, int(number)


@dataclass
class PairResult:
    src: str
    dst: str
    kind: str  # "pod->pod", "node->pod", "pod->node"
    icmp: bool
    tcp: bool
    seen_source: str = ""
    nat: bool = False
    why: list[str] = field(default_factory=list)
    # Where policies hold: what they allow (ICMP, TCP on the echo port), the policies that
    # decided, and the ports policies name (probe_key): observed and expected.
    expect_icmp: bool = True
    expect_tcp: bool = True
    policies: list[str] = field(default_factory=list)
    ports: dict[str, bool] = field(default_factory=dict)
    expect_ports: dict[str, bool] = field(default_factory=dict)
    source: str = ""  # a node's: the address its route to the target sends from

    @property
    def ok(self) -> bool:
        return (self.icmp == self.expect_icmp and self.tcp == self.expect_tcp
                and self.ports == self.expect_ports and not self.nat)

    @property
    def expected(self) -> bool:
        """Whether policy lets this pair connect at all (on the echo port)."""
        return self.expect_icmp or self.expect_tcp


@dataclass
class Report:
    pairs: list[PairResult]
    own_address: dict[str, bool]
    mtu: list[dict[str, Any]]
    # What could not be checked: a node whose agent did not answer, a pod whose namespace is gone.
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (all(p.ok for p in self.pairs) and all(self.own_address.values())
                and all(m["ok"] for m in self.mtu) and not self.problems)

    def explain(self, endpoints: list[Endpoint], lacks: Callable[[str, str], list[str]]
                ) -> None:
        """Each failure's why, from what the nodes on its path lack."""
        by_name = {e.name: e for e in endpoints}
        for r in self.pairs:
            # What a path lacks explains what should have connected and did not.
            if (r.expect_icmp and not r.icmp) or (r.expect_tcp and not r.tcp):
                r.why += explain(by_name[r.src], by_name[r.dst], lacks)
        for m in self.mtu:
            if not m["ok"]:
                m["why"] = explain(by_name[m["src"]], by_name[m["dst"]], lacks)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "pairs": [asdict(p) | {"ok": p.ok} for p in self.pairs],
                "own_address": self.own_address, "mtu": self.mtu, "problems": self.problems}


def own_addresses(ns_path: str) -> set[str]:
    """Every address of the namespace, of both families."""
    ipr = netns.iproute_in(ns_path)
    try:
        return {str(m.get_attr("IFA_ADDRESS")) for m in ipr.get_addr()}
    finally:
        ipr.close()


def _pair(src: Endpoint, dst: Endpoint, src_addrs: set[str], expect: Expect | None = None,
          ports: Sequence[Probe] = ()) -> PairResult:
    kind = f"{src.kind}->{dst.kind}"
    result = PairResult(src.name, dst.name, kind, icmp=probes.ping(src.netns, dst.ip),
                        tcp=False)
    if src.kind == "node":  # where a node sends from depends on the route (vxlan: its tunnel)
        result.source = probes.source_address(src.netns or None, dst.ip) or src.ip
    # A denied connection's SYN is dropped: wait for it less long than for an allowed one.
    timeout = 2.0
    if expect is not None:
        timeout = 2.0 if expect(as_sent(src, result), dst, "TCP", probes.ECHO_PORT)[0] else 1.0
    for protocol, port in ports:  # the ports policies name (none without policies)
        try:
            probes.seen_source(protocol, src.netns, dst.ip, port, timeout=1.0)
            result.ports[probe_key((protocol, port))] = True
        except OSError:
            result.ports[probe_key((protocol, port))] = False
    try:
        result.seen_source = probes.tcp_seen_source(src.netns, dst.ip, timeout=timeout)
        result.tcp = True
        # No NAT: the receiver saw one of the sender's own addresses (a pod has exactly one).
        result.nat = (result.seen_source != src.ip if src.kind == "pod"
                      else result.seen_source not in src_addrs)
        if result.nat:
            result.why.append(f"receiver saw {result.seen_source}, not the sender's own "
                              "address")
    except OSError as exc:
        result.why.append(f"TCP: {exc.strerror or exc}")
    if expect is not None:
        judge(result, src, dst, expect)
    return result


def as_sent(src: Endpoint, result: PairResult) -> Endpoint:
    """The sender with the address it sent from (a node's route may pick another)."""
    return replace(src, ip=result.source) if result.source else src


def judge(result: PairResult, src: Endpoint, dst: Endpoint, expect: Expect) -> None:
    """Hold a probed pair to what policy expects of it: ICMP, TCP on the echo port, and the
    ports probed; a disagreement names the policies that decided."""
    sender = as_sent(src, result)
    result.expect_icmp, icmp_by = expect(sender, dst, "ICMP", 0)
    result.expect_tcp, tcp_by = expect(sender, dst, "TCP", probes.ECHO_PORT)
    result.expect_ports = {key: expect(sender, dst, *_probe_of(key))[0] for key in result.ports}
    result.policies = list(dict.fromkeys(icmp_by + tcp_by))
    if not result.expect_tcp:  # a timeout is what a denied connection should give
        result.why = [w for w in result.why if not w.startswith("TCP: ")]
    checks = [("ICMP", result.icmp, result.expect_icmp), ("TCP", result.tcp, result.expect_tcp),
              *((p.replace("/", " "), got, result.expect_ports[p])
                for p, got in result.ports.items())]
    wrong = [(what, want) for what, got, want in checks if got != want]
    if not wrong and not result.nat:
        result.why = []  # as policy says: nothing to explain
    if wrong and result.policies:
        by = ", ".join(result.policies)
        if denied := [what for what, want in wrong if not want]:
            result.why.append(f"{'/'.join(denied)} connected: policy {by} should deny it")
        if allowed := [what for what, want in wrong if want]:
            result.why.append(f"{'/'.join(allowed)} did not connect: policy {by} should "
                              "allow it")


def plan(sources: list[Endpoint], targets: list[Endpoint]) -> list[tuple[Endpoint, Endpoint]]:
    """The pairs to probe from `sources`: pod->pod, node->pod and pod->node."""
    pods = [t for t in targets if t.kind == "pod"]
    nodes = [t for t in targets if t.kind == "node"]
    out: list[tuple[Endpoint, Endpoint]] = []
    for s in sources:
        out += [(s, d) for d in pods if d.name != s.name]
        if s.kind == "pod":
            out += [(s, d) for d in nodes]
    return out


def mtu_plan(sources: list[Endpoint], targets: list[Endpoint]) -> list[tuple[Endpoint, Endpoint]]:
    """One pod pair per ordered pair of nodes: the first pod of each."""
    def first(endpoints: list[Endpoint]) -> dict[str, Endpoint]:
        out: dict[str, Endpoint] = {}
        for e in endpoints:
            if e.kind == "pod":
                out.setdefault(e.node, e)
        return out

    dsts = first(targets).values()
    return [(a, b) for a in first(sources).values() for b in dsts if a.node != b.node]


def probe(pairs: list[tuple[Endpoint, Endpoint]], mtu_pairs: list[tuple[Endpoint, Endpoint]],
          pod_mtu: int | None, addrs: dict[str, set[str]], workers: int = 32,
          expect: Expect | None = None, ports: Sequence[Probe] = ()
          ) -> tuple[list[PairResult], list[dict[str, Any]]]:
    """Each pair's result and each MTU pair's; the receivers' echo servers must be up."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(
            lambda sd: _pair(sd[0], sd[1], addrs[sd[0].name], expect,
                             ports if sd[1].kind == "pod" else ()), pairs))
        mtu = list(pool.map(lambda sd: _mtu(sd[0], sd[1], pod_mtu, expect), mtu_pairs))
    return results, mtu


def run(endpoints: list[Endpoint], status: dict[str, Any], pod_mtu: int | None,
        family: int = 4, expect: Expect | None = None, ports: Sequence[Probe] = ()) -> Report:
    addrs = {e.name: own_addresses(e.netns) for e in endpoints}
    own = {p.name: p.ip in addrs[p.name] for p in endpoints if p.kind == "pod"}
    servers: list[probes.Echo] = [probes.EchoServer(e.netns) for e in endpoints]
    servers += [probes.SERVERS[protocol](e.netns, port) for e in endpoints if e.kind == "pod"
                for protocol, port in ports]
    try:
        results, mtu = probe(plan(endpoints, endpoints), mtu_plan(endpoints, endpoints),
                             pod_mtu, addrs, expect=expect, ports=ports)
    finally:
        for server in servers:
            server.close()
    report = Report(results, own, mtu)
    report.explain(endpoints, lab_lacks(status, family))
    return report


def _mtu(src: Endpoint, dst: Endpoint, pod_mtu: int | None,
         expect: Expect | None = None) -> dict[str, Any]:
    """Full-size pings with DF between two nodes' pods; where policy denies ICMP between
    them, the check is whether none crosses."""
    mtu = pod_mtu or 1500
    headers = 48 if ":" in dst.ip else 28  # IPv6 or IPv4, and ICMP's 8 bytes
    allowed = expect is None or expect(src, dst, "ICMP", 0)[0]
    crossed = probes.ping(src.netns, dst.ip, size=mtu - headers, dont_fragment=True,
                          timeout=2.0 if allowed else 1.0)
    return {"src": src.name, "dst": dst.name, "size": mtu, "ok": crossed == allowed}


def endpoints_of(status: dict[str, Any], family: int = 4) -> list[Endpoint]:
    """The lab's nodes and pods, by their addresses of `family`. A node without an underlay
    address of the family sends from its pod bridge's gateway (its own subnet's first
    address), as Lease.address says."""
    import ipaddress

    from podnet.lab.lab import ns_path

    def node_ip(n: dict[str, Any]) -> str:
        if own := [ip for ip in n["node_ips"] if (":" in ip) == (family == 6)]:
            return str(own[0])
        subnet = next(s for s in n["pod_subnets"] if (":" in s) == (family == 6))
        if "-" in subnet:  # l2: the node's range of the shared subnet, after its gateway
            return str(ipaddress.ip_address(subnet.split("-")[0]) - 1)
        return str(ipaddress.ip_network(subnet).network_address + 1)

    def pod_ip(p: dict[str, Any]) -> str:
        return str(next(ip for ip in p["ips"] if (":" in ip) == (family == 6)))

    out = [Endpoint(n["name"], "node", ns_path(n["netns"]), node_ip(n), n["name"])
           for n in status["nodes"]]
    out += [Endpoint(p["name"], "pod", ns_path(p["netns"]), pod_ip(p), p["node"])
            for p in status["pods"]]
    return out


def families(status: dict[str, Any]) -> list[int]:
    """The lab's address families, by its ip_family."""
    from podnet.lab.topology import FAMILIES

    return FAMILIES.get(str(status.get("ip_family")), [4])


def _matrix(report: Report, endpoints: list[Endpoint], title: str,
            cell: Callable[[PairResult], str]) -> list[str]:
    receivers = [e for e in endpoints if e.kind == "pod"] + [e for e in endpoints
                                                              if e.kind == "node"]
    by_pair = {(r.src, r.dst): r for r in report.pairs}
    width = max(len(e.name) for e in endpoints) + 1
    lines = [title.ljust(width) + " ".join(e.name[:width].rjust(width) for e in receivers)]
    for s in endpoints:
        row = []
        for d in receivers:
            r = by_pair.get((s.name, d.name))
            row.append(("-" if r is None else cell(r)).rjust(width))
        lines.append(s.name.ljust(width) + " ".join(row))
    return lines


def render(report: Report, endpoints: list[Endpoint]) -> str:
    lines = []
    if any(r.policies for r in report.pairs):  # policy decides: what it says, what happened
        lines += _matrix(report, endpoints, "expected", lambda r: "yes" if r.expected else "no")
        lines += ["", *_matrix(report, endpoints, "observed",
                               lambda r: "yes" if r.icmp or r.tcp else "no"), ""]
    lines += _matrix(report, endpoints, "from \\ to", lambda r: "ok" if r.ok else "FAIL")
    lines.append("")
    for r in report.pairs:
        if not r.ok:
            lines.append(f"FAIL {r.src} -> {r.dst} ({r.kind}): icmp {'ok' if r.icmp else 'no'}"
                         f", tcp {'ok' if r.tcp else 'no'}; " + "; ".join(r.why))
    for problem in report.problems:
        lines.append(f"FAIL {problem}")
    for name, good in report.own_address.items():
        if not good:
            lines.append(f"FAIL {name}: its address is not on its own interface")
    for m in report.mtu:
        if not m["ok"]:
            lines.append(f"FAIL MTU {m['src']} -> {m['dst']}: {m['size']}-byte packets with DF "
                         "did not cross; " + "; ".join(m.get("why", [])))
    n = len(report.pairs)
    bad = sum(1 for r in report.pairs if not r.ok)
    mtu_ok = sum(1 for m in report.mtu if m["ok"])
    denied = sum(1 for r in report.pairs if not r.expected)
    what = (f"connect or not as policy expects ({denied} denied), without NAT"
            if any(r.policies for r in report.pairs) else "connect without NAT (ICMP and TCP)")
    lines.append(f"{n - bad}/{n} pairs {what}, {mtu_ok}/{len(report.mtu)} node pairs pass "
                 "full-MTU DF packets: " + ("PASS" if report.ok else "FAIL"))
    return "\n".join(lines)

