"""NetworkPolicy in the lab: the upstream e2e suite's cases, each proven pair by pair by `podnet
verify` against the truth table the evaluator computes (allowed pairs connect with the sender's
own address, denied ones do not), on each backend with the fast path on and off; policy and
label changes taking effect; a pod labelled before its ADD judged from its first packet; an
agent restart opening nothing; bad input refused with nothing stored."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from podnet.lab.lab import Lab, ns_path
from podnet.lab.topology import PodSpec
from podnet.netlink import netns
from podnet.policy import store
from podnet.verify.check import PairResult, Report
from podnet.verify.probes import source_address
from tests.lab.conftest import (
    PODNET,
    MakeLab,
    failures,
    fast_path_at,
    transfer,
    verify,
    verify_etcd,
    wait_published,
)
from tests.lab.test_fastpath import link_packets


def policy(lab: Lab, tmp: Path, text: str, *extra: str) -> subprocess.CompletedProcess[str]:
    path = tmp / f"policy-{time.monotonic_ns()}.yaml"
    path.write_text(text)
    return subprocess.run([*PODNET, "policy", "apply", "-f", str(path), "--lab", lab.topo.name,
                           *extra], capture_output=True, text=True, timeout=60)


def cli(lab: Lab, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODNET, *argv, "--lab", lab.topo.name], capture_output=True,
                          text=True, timeout=60)


def connects(lab: Lab, src: PodSpec, dst: PodSpec) -> bool:
    out = subprocess.run(["nsenter", f"--net={ns_path(src.netns(lab.topo.name))}", "ping",
                          "-c", "1", "-W", "1", dst.ip], capture_output=True)
    return out.returncode == 0


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until `check` holds; fails the test after `timeout`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "not within the time allowed"
        time.sleep(0.05)
    return time.monotonic() - start


def pods(lab: Lab) -> dict[str, PodSpec]:
    """x/a and x/d on node1, x/b and y/c on node2 (labelled pod=<name>); namespaces x, y
    labelled ns=<name>."""
    for ns in ("x", "y"):
        assert cli(lab, "label", "namespace", ns, f"ns={ns}").returncode == 0
    out = {}
    for node, ns, name in (("node1", "x", "a"), ("node2", "x", "b"), ("node2", "y", "c"),
                           ("node1", "x", "d")):
        out[name] = lab.add_pod(node, ns, name, {"pod": name})
    return out


def pair(report: Report, src: str, dst: str) -> PairResult:
    return next(p for p in report.pairs if (p.src, p.dst) == (src, dst))


DENY_INGRESS_BUT_B = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
"""


@pytest.mark.parametrize(("backend", "fast_path"), [("host-gw", True), ("vxlan", True),
                                                    ("l2", True), ("gateway", True),
                                                    ("host-gw", False)])
def test_ingress_isolation_pair_by_pair(make_lab: MakeLab, tmp_path: Path, backend: str,
                                        fast_path: bool) -> None:
    lab = make_lab(backend, nodes=2, pods=0, fast_path=fast_path,
                   underlay="routed" if backend == "gateway" else "switch")
    p = pods(lab)
    assert verify(lab).ok  # no policy: everything connects
    out = policy(lab, tmp_path, DENY_INGRESS_BUT_B)
    assert out.returncode == 0 and "networkpolicy x/only-b applied" in out.stdout, out.stderr
    eventually(lambda: not connects(lab, p["c"], p["a"]))
    report = verify(lab)
    assert report.ok, failures(report)
    a = p["a"].name
    allowed = {r.src for r in report.pairs if r.dst == a and r.expected}
    # x/b by label; node1, a's own node (kubelet); nobody else, same node or not.
    assert allowed == {p["b"].name, "node1"}, allowed
    denied = pair(report, p["c"].name, a)
    assert not denied.icmp and not denied.tcp and denied.policies == ["x/only-b"]
    # Replies of a's own connections come back (stateful), from every pod.
    assert all(r.ok and r.tcp for r in report.pairs if r.src == a)
    # Isolated, a's packets take the normal path; the others' keep the fast one.
    if fast_path:
        entries = _pod_map(lab, "node1")
        assert entries[p["a"].ip] is True and entries[p["d"].ip] is False
    if backend == "vxlan":  # as a cluster no lab built: the agents probe, policy judges
        wait_published(lab)
        code, remote, err = verify_etcd(lab)
        assert code == 0 and remote is not None and remote["ok"], (err, remote)
        denied = next(r for r in remote["pairs"] if (r["src"], r["dst"]) == ("y/c", "x/a"))
        assert not denied["tcp"] and not denied["expect_tcp"] and denied["ok"]
        assert denied["policies"] == ["x/only-b"]


@pytest.mark.parametrize("backend", ["host-gw", "vxlan", "l2"])
def test_an_isolated_pods_connections_keep_the_fast_path(make_lab: MakeLab, tmp_path: Path,
                                                         backend: str) -> None:
    """The normal path judges a connection's first packets and its end; the program carries
    what lies between. x/a, isolated for ingress, fetches 20 MB from y/c, which may not
    connect to it: the data passes node1 without its bridge, and c's closing FIN, far beyond
    the window conntrack last saw, still reaches a (not taken for a new connection and
    dropped)."""
    lab = make_lab(backend, nodes=2, pods=0)
    p = pods(lab)
    assert policy(lab, tmp_path, DENY_INGRESS_BUT_B).returncode == 0
    eventually(lambda: not connects(lab, p["c"], p["a"]))
    assert _pod_map(lab, "node1")[p["a"].ip] is True
    bridge = "podnet-l2a" if backend == "l2" else "kube-bridge"  # a's normal path

    def packets() -> tuple[int, int]:
        return (link_packets(lab, "node1", "eth0", "rx", "tx"),
                link_packets(lab, "node1", bridge, "rx", "tx"))

    before = packets()
    size = 20 << 20
    assert transfer(lab, p["c"], p["a"], size) == str(size)
    # Of the (segmentation-offload) packets node1's uplink carried, the normal path took
    # the handshake and the end alone (its bridge carries them all without the program).
    uplink, bridged = (after - then for after, then in zip(packets(), before, strict=True))
    assert uplink > 300 and bridged < uplink / 10, (uplink, bridged)
    assert not connects(lab, p["c"], p["a"])


def _pod_map(lab: Lab, node: str) -> dict[str, bool]:
    """The node's pod map: address -> whether policy holds it on the normal path."""
    with fast_path_at(lab, node) as (_, _, fast):
        assert fast is not None
        return {str(ip): e.policed for ip, e in fast.entries().items()}


def test_selectors_ports_ip_blocks_and_egress(make_lab: MakeLab, tmp_path: Path) -> None:
    """Pod AND namespace in one peer against two peers (OR), a TCP port and an endPort
    range (verify probes each), ipBlock with except, egress denied but for one namespace."""
    lab = make_lab("vxlan", nodes=2, pods=0)
    p = pods(lab)
    # node2 reaches node1's pods from its tunnel address: the ipBlock names that one.
    node2_ip = source_address(lab.target_netns("node2"), p["a"].ip)
    out = policy(lab, tmp_path, f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: and-peer, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - from:
    - podSelector: {{matchLabels: {{pod: c}}}}
      namespaceSelector: {{matchLabels: {{ns: y}}}}
    ports: [{{port: 8080}}, {{port: 9000, endPort: 9010}}]
  - from: [{{ipBlock: {{cidr: {node2_ip}/32}}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: egress-to-y, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: d}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]
""")
    assert out.returncode == 0, out.stderr
    eventually(lambda: not connects(lab, p["d"], p["b"]))
    report = verify(lab)
    assert report.ok, failures(report)
    ca = pair(report, p["c"].name, p["a"].name)
    # y/c reaches a only on the ports named: not ICMP, not the echo port; 8080, 9000, 9010.
    assert (ca.icmp, ca.tcp) == (False, False)
    assert ca.ports == {"TCP/8080": True, "TCP/9000": True, "TCP/9010": True}
    ba = pair(report, p["b"].name, p["a"].name)
    assert not ba.icmp and not any(ba.ports.values())  # x/b: not of namespace y
    assert pair(report, "node2", p["a"].name).tcp  # ipBlock
    assert {r.dst for r in report.pairs if r.src == p["d"].name and r.tcp} == {
        p["c"].name, "node1"}  # egress to namespace y, and its own node


def test_udp_sctp_and_named_ports_pair_by_pair(make_lab: MakeLab, tmp_path: Path) -> None:
    """verify probes each port a policy names by its protocol (UDP by datagram, SCTP by its
    INIT and INIT ACK) and a named port as the pods that have it number it."""
    lab = make_lab("vxlan", nodes=2, pods=0)
    p = pods(lab)
    for pod in ("x/a", "y/c"):  # `http` is TCP 8080 on these two alone
        out = cli(lab, "label", "pod", pod, f"pod={pod[-1]}", "--port", "http=TCP/8080")
        assert out.returncode == 0, out.stderr
    out = policy(lab, tmp_path, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: protocols, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{protocol: UDP, port: 5353}, {protocol: SCTP, port: 9000}, {port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: d-to-http, namespace: x}
spec:
  podSelector: {matchLabels: {pod: d}}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}]}]
""")
    assert out.returncode == 0, out.stderr
    eventually(lambda: not connects(lab, p["c"], p["a"]) and not connects(lab, p["d"], p["b"]))
    report = verify(lab)
    assert report.ok, failures(report)
    every = {"SCTP/9000", "TCP/8080", "UDP/5353"}
    # x/b reaches a on exactly the three ports; y/c on none.
    ba = pair(report, p["b"].name, p["a"].name)
    assert ba.ports == dict.fromkeys(every, True) and not ba.icmp and not ba.tcp
    assert pair(report, p["c"].name, p["a"].name).ports == dict.fromkeys(every, False)
    # d reaches `http` where a pod has it and a's ingress does not refuse d: c only.
    dc, db = pair(report, p["d"].name, p["c"].name), pair(report, p["d"].name, p["b"].name)
    assert dc.ports == {"SCTP/9000": False, "TCP/8080": True, "UDP/5353": False}
    assert not dc.tcp and not any(db.ports.values())
    assert not any(pair(report, p["d"].name, p["a"].name).ports.values())
    # The same through etcd: each node's agent serves and probes the ports.
    wait_published(lab)
    code, remote, err = verify_etcd(lab)
    assert code == 0 and remote is not None and remote["ok"], (err, remote)
    by_pair = {(r["src"], r["dst"]): r for r in remote["pairs"]}
    assert by_pair[("x/b", "x/a")]["ports"] == dict.fromkeys(every, True)
    assert by_pair[("x/d", "y/c")]["ports"]["TCP/8080"] is True


def test_ip_block_except_default_deny_egress_and_policies_adding_up(
        make_lab: MakeLab, tmp_path: Path) -> None:
    """ipBlock with an exception, a second policy adding a port for the excepted pod, and a
    pod denied every egress; the whole truth table held by verify."""
    lab = make_lab("host-gw", nodes=2, pods=0)
    p = pods(lab)
    pods_net = ipaddress.ip_network(f"{p['a'].ip}/16", strict=False)
    out = policy(lab, tmp_path, f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: pods-but-c, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - from: [{{ipBlock: {{cidr: {pods_net}, except: [{p['c'].ip}/32]}}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: y-on-8080, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]
    ports: [{{port: 8080}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: d-no-egress, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: d}}}}
  policyTypes: [Egress]
""")
    assert out.returncode == 0, out.stderr
    eventually(lambda: not connects(lab, p["c"], p["a"]) and not connects(lab, p["d"], p["b"]))
    report = verify(lab)
    assert report.ok, failures(report)
    ca = pair(report, p["c"].name, p["a"].name)
    assert not ca.tcp and ca.ports == {"TCP/8080": True}  # excepted, let in on 8080 alone
    assert pair(report, p["b"].name, p["a"].name).tcp  # within the block
    assert not pair(report, "node2", p["a"].name).tcp  # a node's address is not
    assert {r.dst for r in report.pairs if r.src == p["d"].name and r.tcp} == {"node1"}


def test_changes_take_effect_and_deletion_opens(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab("host-gw", nodes=2, pods=0)
    p = pods(lab)
    out = policy(lab, tmp_path, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-team, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: blue}}}]
""")
    assert out.returncode == 0, out.stderr
    eventually(lambda: not connects(lab, p["c"], p["a"]))
    # The namespace gains the label: y's pods are let in.
    assert cli(lab, "label", "namespace", "y", "team=blue").returncode == 0
    took = eventually(lambda: connects(lab, p["c"], p["a"]))
    assert not connects(lab, p["b"], p["a"])
    # The pod loses the label the policy selects it by: it is open again.
    assert cli(lab, "label", "pod", "x/a", "pod-").returncode == 0
    eventually(lambda: connects(lab, p["b"], p["a"]))
    assert cli(lab, "label", "pod", "x/a", "pod=a").returncode == 0
    eventually(lambda: not connects(lab, p["b"], p["a"]))
    listed = json.loads(cli(lab, "policy", "list", "--json").stdout)
    assert [o["metadata"]["name"] for o in listed] == ["from-team"]
    assert cli(lab, "policy", "delete", "x/from-team").returncode == 0
    eventually(lambda: connects(lab, p["b"], p["a"]))
    assert verify(lab).ok
    assert took < 10


def test_a_pod_labelled_before_its_add_is_judged_from_its_first_packet(
        make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab("host-gw", nodes=2, pods=0)
    p = pods(lab)
    assert policy(lab, tmp_path, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-new, namespace: x}
spec:
  podSelector: {matchLabels: {role: locked}}
  ingress: []
""").returncode == 0
    # Once node1 holds the policy (a first pod it selects is isolated) ...
    first = lab.add_pod("node1", "x", "first", {"role": "locked"})
    eventually(lambda: not connects(lab, p["b"], first))
    # ... a pod whose label is stored before it is wired meets it with its first packets.
    locked = lab.add_pod("node1", "x", "locked", {"role": "locked"})
    assert not connects(lab, p["b"], locked) and not connects(lab, p["d"], locked)
    assert connects(lab, locked, p["b"])  # egress is open, and the replies come back
    assert _pod_map(lab, "node1")[locked.ip] is True


def test_a_pod_talks_once_its_add_returns_while_etcd_hangs(make_lab: MakeLab) -> None:
    """The runtime starts a pod when its ADD returns: the node's server judges the pod before
    it answers, also while etcd does not answer (by what the node knows, after the store's
    timeout); a pod still pending then could neither send nor be reached (CI's chaos run
    caught one, added during an etcd election)."""
    lab = make_lab("host-gw", nodes=2, pods=0)
    p = pods(lab)
    frozen = []
    try:
        for member in lab.topo.etcd_names:
            pid = lab.topo.etcd_pids.get(member, 0)
            # The lab's member, not a recycled pid: its network namespace is the member's.
            assert pid and netns.ns_id(f"/proc/{pid}/ns/net") == netns.ns_id(
                ns_path(lab.prefix + member))
            os.kill(pid, signal.SIGSTOP)
            frozen.append(pid)
        new = lab.add_pod("node1", "x", "new")
        assert connects(lab, new, p["d"]) and connects(lab, p["a"], new)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)


def test_an_agent_restart_opens_nothing(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab("host-gw", nodes=2, pods=0)
    p = pods(lab)
    assert policy(lab, tmp_path, DENY_INGRESS_BUT_B).returncode == 0
    eventually(lambda: not connects(lab, p["c"], p["a"]))
    node1 = lab.topo.node("node1")
    os.kill(node1.agent_pid, 15)
    assert not connects(lab, p["c"], p["a"])  # no agent: the rules stay
    lab.restart_agent("node1")
    assert not connects(lab, p["c"], p["a"]) and connects(lab, p["b"], p["a"])
    assert verify(lab).ok


def test_an_etcd_outage_opens_nothing(make_lab: MakeLab, tmp_path: Path) -> None:
    """etcd gone, the nodes keep the last policies they knew, also through an agent's
    restart meanwhile (it cannot read them anew); back, a change applies again."""
    lab = make_lab("host-gw", nodes=2, pods=0)
    p = pods(lab)
    assert policy(lab, tmp_path, DENY_INGRESS_BUT_B).returncode == 0
    eventually(lambda: not connects(lab, p["c"], p["a"]))
    lab.stop_etcd()
    try:
        time.sleep(3)  # past the agents' first failed reads and watches
        assert not connects(lab, p["c"], p["a"]) and connects(lab, p["b"], p["a"])
        node1 = lab.stop_agent("node1")
        lab.start_agent(node1)  # it waits for etcd, its tables kept
        time.sleep(3)
        assert not connects(lab, p["c"], p["a"]) and connects(lab, p["b"], p["a"])
    finally:
        lab.start_etcd()
    assert cli(lab, "policy", "delete", "x/only-b").returncode == 0
    eventually(lambda: connects(lab, p["c"], p["a"]), timeout=30)


def test_a_hundred_thousand_namespaces_leave_the_agents_working(make_lab: MakeLab,
                                                                tmp_path: Path) -> None:
    """Hostile input: 100,000 labelled namespaces written at once. The agents stay alive and
    keep enforcing; a label change still takes effect (docs/benchmarks.md: how fast, and
    their memory)."""
    lab = make_lab("host-gw", nodes=2, pods=0)
    p = pods(lab)
    assert policy(lab, tmp_path, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-blue, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: blue}}}]
""").returncode == 0
    eventually(lambda: not connects(lab, p["c"], p["a"]))
    with netns.entered(ns_path(lab.prefix + "cp")):
        kv = lab.etcd_store()
        try:
            kv.put_all({f"{store.NAMESPACES}n{i}": json.dumps(
                {"labels": {"team": ("blue", "red")[i % 2], "i": str(i)}})
                for i in range(100_000)})
        finally:
            kv.close()
    assert cli(lab, "label", "namespace", "y", "team=blue").returncode == 0
    eventually(lambda: connects(lab, p["c"], p["a"]), timeout=60)
    assert not connects(lab, p["d"], p["a"])  # x is not blue
    assert all(os.path.exists(f"/proc/{n.agent_pid}") for n in lab.topo.nodes)


@pytest.mark.parametrize(("text", "message"), [
    ("kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: a}\n"
     "spec: {podSelector: {}, ingress: [{ports: [{port: 80, endPort: 70}]}]}",
     "document 1: spec.ingress[0].ports[0].endPort: 70 must be at least port"),
    ("kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: ok}\n"
     "spec: {podSelector: {}}\n---\nkind: NetworkPolicy\napiVersion: networking.k8s.io/v1\n"
     "metadata: {name: b}\nspec: {podSelector: {}, bogus: 1}",
     "document 2: spec.bogus: unknown field"),
    ("kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: c}\n"
     "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, "
     "except: [192.168.0.0/16]}}]}]}", "is not a strict subset of cidr"),
    ("a: [unclosed", "is not YAML"),
])
def test_bad_policies_are_refused_and_nothing_is_stored(make_lab: MakeLab, tmp_path: Path,
                                                        text: str, message: str) -> None:
    lab = make_lab("host-gw", nodes=1, pods=0)
    out = policy(lab, tmp_path, text)
    assert out.returncode != 0 and message in out.stderr, out.stderr
    assert out.stderr.startswith("podnet policy apply: ") and "Traceback" not in out.stderr
    assert json.loads(cli(lab, "policy", "list", "--json").stdout) == []
