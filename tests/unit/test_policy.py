"""NetworkPolicy: Kubernetes objects validated as the API server does (field paths), and the
evaluator's truth on the upstream e2e suite's cases."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest

from podnet.policy import k8s
from podnet.policy.compile import compile_node, table, update
from podnet.policy.model import Cluster, Pod, Policy

IP = ipaddress.ip_address


def np(spec: dict[str, Any], name: str = "p", namespace: str = "x") -> Policy:
    return k8s.policy_from_k8s({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                "metadata": {"name": name, "namespace": namespace},
                                "spec": spec})


FULL = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "web", "namespace": "x", "labels": {"app": "web"}},
    "spec": {
        "podSelector": {"matchLabels": {"app": "web"},
                        "matchExpressions": [{"key": "tier", "operator": "In",
                                              "values": ["a", "b"]}]},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}},
                               "namespaceSelector": {"matchLabels": {"team": "t"}}},
                              {"ipBlock": {"cidr": "192.168.0.0/16",
                                           "except": ["192.168.1.0/24"]}}],
                     "ports": [{"protocol": "TCP", "port": 80},
                               {"protocol": "UDP", "port": 5000, "endPort": 5010},
                               {"port": "http"}]}],
        "egress": [{"to": [{"namespaceSelector": {}}]}, {}],
    },
}


def test_a_policy_round_trips_in_the_apis_form() -> None:
    policy = k8s.policy_from_k8s(FULL)
    assert policy.key == "x/web" and policy.types == ("Ingress", "Egress")
    again = k8s.policy_from_k8s(k8s.to_k8s(policy))
    assert again == policy
    port = policy.ingress[0].ports[2]
    assert (port.protocol, port.port) == ("TCP", "http")  # TCP by default


def test_policy_types_default_as_the_api_does() -> None:
    assert np({"podSelector": {}}).types == ("Ingress",)
    assert np({"podSelector": {}, "egress": []}).types == ("Ingress", "Egress")
    assert np({"podSelector": {}, "policyTypes": ["Egress"]}).types == ("Egress",)


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(FULL)
    node: Any = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return obj


@pytest.mark.parametrize(("path", "value", "where"), [
    (["spec", "bogus"], 1, "spec.bogus: unknown field"),
    (["kind"], "Pod", "kind:"),
    (["metadata", "name"], "Web_Policy", "metadata.name:"),
    (["metadata", "namespace"], "a" * 64, "metadata.namespace:"),
    (["spec", "podSelector", "matchExpressions", 0, "operator"], "Like",
     "spec.podSelector.matchExpressions[0].operator:"),
    (["spec", "podSelector", "matchExpressions", 0, "values"], [],
     "spec.podSelector.matchExpressions[0].values: must be non-empty"),
    (["spec", "podSelector", "matchLabels"], {"app": "v" * 65536},
     "spec.podSelector.matchLabels[app]:"),
    (["spec", "podSelector", "matchLabels"], {"-bad": "v"}, "spec.podSelector.matchLabels[-bad]"),
    (["spec", "ingress", 0, "ports", 0, "port"], 70000, "spec.ingress[0].ports[0].port:"),
    (["spec", "ingress", 0, "ports", 0, "protocol"], "ICMP",
     "spec.ingress[0].ports[0].protocol:"),
    (["spec", "ingress", 0, "ports", 1, "endPort"], 4000,
     "spec.ingress[0].ports[1].endPort: 4000 must be at least port"),
    (["spec", "ingress", 0, "ports", 2, "endPort"], 90,
     "spec.ingress[0].ports[2].endPort: may not be specified"),
    (["spec", "ingress", 0, "ports", 2, "port"], "HTTP_", "spec.ingress[0].ports[2].port:"),
    (["spec", "ingress", 0, "from", 1, "ipBlock", "cidr"], "192.168.0.1/16",
     "spec.ingress[0].from[1].ipBlock.cidr:"),
    (["spec", "ingress", 0, "from", 1, "ipBlock", "except"], ["10.0.0.0/8"],
     "spec.ingress[0].from[1].ipBlock.except[0]: 10.0.0.0/8 is not a strict subset"),
    (["spec", "ingress", 0, "from", 1, "podSelector"], {},
     "spec.ingress[0].from[1]: may not specify more than 1 peer type"),
    (["spec", "ingress", 0, "from", 0], {}, "spec.ingress[0].from[0]: must specify a peer"),
    (["spec", "policyTypes"], ["Ingress", "Ingress"], "spec.policyTypes: lists a type twice"),
])
def test_what_the_api_server_refuses_is_refused_with_its_path(path: list[Any], value: Any,
                                                              where: str) -> None:
    with pytest.raises(k8s.Invalid) as exc:
        k8s.policy_from_k8s(_with(path, value))
    assert str(exc.value).startswith(where), str(exc.value)


def test_a_policy_beyond_podnets_bounds_is_refused() -> None:
    rules = [{"from": [{"podSelector": {"matchLabels": {"n": str(i)}}}]} for i in range(10000)]
    with pytest.raises(k8s.Invalid, match=f"more than {k8s.MAX_ITEMS}"):
        np({"podSelector": {}, "ingress": rules})
    np({"podSelector": {}, "ingress": rules[:300]})  # within bounds


def test_pods_and_namespaces_from_kubernetes_objects() -> None:
    pod = k8s.pod_from_k8s({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "x", "labels": {"app": "web"}},
        "spec": {"nodeName": "node1", "containers": [
            {"name": "c", "ports": [{"name": "http", "containerPort": 8080},
                                    {"containerPort": 9090}]}]},
        "status": {"podIPs": [{"ip": "10.244.1.2"}, {"ip": "fd00:10:244:1::2"}]}})
    assert pod.key == "x/web-0" and pod.node == "node1"
    assert pod.ports == {"http": ("TCP", 8080)} and len(pod.ips) == 2
    assert k8s.namespace_from_k8s({"metadata": {"name": "x", "labels": {"team": "t"}}}) == (
        "x", {"team": "t"})
    with pytest.raises(k8s.Invalid, match=r"status.podIPs\[0\].ip"):
        k8s.pod_from_k8s({"metadata": {"name": "a"}, "status": {"podIPs": [{"ip": "nope"}]}})


# -- the evaluator: the upstream e2e suite's cases, as truth tables ------------------------------
def pod(ns: str, name: str, n: int, **labels: str) -> Pod:
    return Pod(ns, name, (IP(f"10.244.{n}.2"),), labels, {"serve-80": ("TCP", 80)})


@pytest.fixture
def cluster() -> Cluster:
    """Namespaces x, y, z with pods a, b, c each (pod=a|b|c), as the e2e suite builds."""
    pods = [pod(ns, name, 10 * i + j, pod=name)
            for i, ns in enumerate("xyz") for j, name in enumerate("abc")]
    return Cluster([], {ns: {"ns": ns} for ns in "xyz"}, pods)


def matrix(c: Cluster, protocol: str = "TCP", port: int = 80) -> set[tuple[str, str]]:
    """The allowed ordered pairs (source key, destination key)."""
    return {(s.key, d.key) for s in c.pods for d in c.pods if s is not d
            and c.allowed(s, d, protocol, port, 4).allowed}


def everyone(c: Cluster) -> set[tuple[str, str]]:
    return {(s.key, d.key) for s in c.pods for d in c.pods if s is not d}


def test_no_policy_allows_everything(cluster: Cluster) -> None:
    assert matrix(cluster) == everyone(cluster)


def test_default_deny_ingress(cluster: Cluster) -> None:
    cluster.policies = [np({"podSelector": {}})]
    assert matrix(cluster) == {p for p in everyone(cluster) if not p[1].startswith("x/")}
    verdict = cluster.allowed(cluster.pods[3], cluster.pods[0], "TCP", 80, 4)
    assert not verdict.allowed and verdict.policies == ("x/p",)  # who denied it


def test_default_deny_egress(cluster: Cluster) -> None:
    cluster.policies = [np({"podSelector": {}, "policyTypes": ["Egress"]})]
    assert matrix(cluster) == {p for p in everyone(cluster) if not p[0].startswith("x/")}


def test_allow_by_pod_label_within_the_namespace(cluster: Cluster) -> None:
    cluster.policies = [np({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]})]
    into_xa = {s for s, d in matrix(cluster) if d == "x/a"}
    assert into_xa == {"x/b"}  # not y/b: a pod selector alone is the policy's namespace


def test_pod_and_namespace_selector_in_one_peer_versus_two(cluster: Cluster) -> None:
    both = {"podSelector": {"matchLabels": {"pod": "b"}},
            "namespaceSelector": {"matchLabels": {"ns": "y"}}}
    cluster.policies = [np({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [both]}]})]
    assert {s for s, d in matrix(cluster) if d == "x/a"} == {"y/b"}  # AND
    cluster.policies = [np({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"podSelector": both["podSelector"]},
                  {"namespaceSelector": both["namespaceSelector"]}]}]})]
    assert {s for s, d in matrix(cluster) if d == "x/a"} == {"x/b", "y/a", "y/b", "y/c"}  # OR


def test_namespace_selected_by_its_name_label(cluster: Cluster) -> None:
    cluster.policies = [np({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}]})]
    assert {s for s, d in matrix(cluster) if d == "x/b"} == {"z/a", "z/b", "z/c"}


def test_ip_block_with_except(cluster: Cluster) -> None:
    cluster.policies = [np({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.11.0/24"]}}]}]})]
    # y/b is 10.244.11.2, inside the except
    assert {s for s, d in matrix(cluster) if d == "x/a"} == {
        p.key for p in cluster.pods if p.key not in ("x/a", "y/b")}
    outside = IP("192.0.2.1")
    assert not cluster.allowed(outside, cluster.pods[0], "TCP", 80, 4).allowed
    assert cluster.allowed(outside, cluster.pods[1], "TCP", 80, 4).allowed  # x/b: unisolated


def test_ports_end_ports_and_named_ports(cluster: Cluster) -> None:
    xa = cluster.pods[0]
    cluster.policies = [np({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"ports": [{"port": 81, "endPort": 85}, {"protocol": "UDP", "port": "serve-80"}]}]})]
    yb = cluster.pods[4]
    got = {(proto, port) for proto in ("TCP", "UDP", "SCTP") for port in (80, 81, 85, 86)
           if cluster.allowed(yb, xa, proto, port, 4).allowed}
    # serve-80 is TCP 80 on x/a: a UDP rule of that name matches no port
    assert got == {("TCP", 81), ("TCP", 85)}
    cluster.policies = [np({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"ports": [{"port": "serve-80"}]}]})]
    assert cluster.allowed(yb, xa, "TCP", 80, 4).allowed
    assert not cluster.allowed(yb, xa, "TCP", 81, 4).allowed
    assert not cluster.allowed(yb, xa, "ICMP", 0, 4).allowed  # ports given: no ICMP


def test_egress_deny_with_an_allowed_exception(cluster: Cluster) -> None:
    cluster.policies = [np({"podSelector": {"matchLabels": {"pod": "a"}},
                            "policyTypes": ["Egress"],
                            "egress": [{"to": [{"namespaceSelector": {
                                "matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}]})]
    assert {d for s, d in matrix(cluster) if s == "x/a"} == {"y/a", "y/b", "y/c"}
    assert not {d for s, d in matrix(cluster, port=81) if s == "x/a"}


def test_policies_add_up_and_each_direction_isolates_alone(cluster: Cluster) -> None:
    first = np({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}, name="first")
    second = np({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]}, name="second")
    cluster.policies = [first, second]
    assert {s for s, d in matrix(cluster) if d == "x/a"} == {"x/b", "x/c"}
    verdict = cluster.allowed(cluster.pods[2], cluster.pods[0], "TCP", 80, 4)
    assert verdict.allowed and verdict.policies == ("x/second",)
    # Ingress isolation leaves x/a's egress open.
    assert {d for s, d in matrix(cluster) if s == "x/a"} == {
        p.key for p in cluster.pods if p.key != "x/a"}


def test_label_changes_take_effect(cluster: Cluster) -> None:
    cluster.policies = [np({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})]
    assert ("z/b", "x/a") not in matrix(cluster)
    cluster.namespaces["z"] = {"ns": "y"}
    assert ("z/b", "x/a") in matrix(cluster)
    cluster.pods[0] = Pod("x", "a", cluster.pods[0].ips, {"pod": "changed"})
    assert matrix(cluster) == everyone(cluster)  # no longer selected


# -- the compiler: one node's table ------------------------------------------------------------
NETS = [ipaddress.ip_network("10.244.0.0/16")]


def test_the_table_grows_with_policies_and_peers_not_with_pods() -> None:
    """Pods the same policies select share a chain: a hundred selected pods cost the rules of
    one, and each distinct peer is one set."""
    def build(n: int) -> tuple[int, int, str]:
        pods = [Pod("x", f"p{i}", (IP(f"10.244.0.{i + 2}"),), {"app": "web"}) for i in range(n)]
        pods.append(Pod("y", "client", (IP("10.244.1.2"),), {"role": "client"}))
        policies = [np({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                       "podSelector": {"matchLabels": {"role": "client"}}}],
             "ports": [{"port": 8000 + k}]}]}, name=f"p{k}") for k in range(10)]
        out = compile_node(Cluster(policies, {"y": {"ns": "y"}}, pods), pods[:n], NETS)
        text = table(out)
        return out.rules, text.count("\n  chain "), text
    rules10, chains10, _ = build(10)
    rules100, chains100, text = build(100)
    assert rules10 == rules100 == 10 and chains10 == chains100 == 1 + 4  # in0 + base chains
    assert text.count("  set s") == 1  # the client's one set, shared by all ten rules
    assert "10.244.0.101 : jump in0" in text


def test_the_table_resolves_blocks_and_named_ports() -> None:
    web = Pod("x", "web", (IP("10.244.0.2"),), {"app": "web"}, {"http": ("TCP", 8080)})
    api = Pod("x", "api", (IP("10.244.1.2"),), {"app": "api"}, {"http": ("TCP", 9090)})
    cluster = Cluster([np({"podSelector": {"matchLabels": {"app": "web"}},
                           "policyTypes": ["Ingress", "Egress"],
                           "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                              "except": ["10.244.0.0/16"]}}],
                                        "ports": [{"port": "http"}, {"port": "none"}]}],
                           "egress": [{"ports": [{"port": "http"}]}]})], {}, [web, api])
    text = table(compile_node(cluster, [web], NETS))
    # The block less its exception, as disjoint networks; the pod's own http port (8080).
    assert "10.0.0.0/9" in text and "10.244.0.0/16" not in text.split("chain")[0]
    assert "meta l4proto tcp th dport 8080 accept" in text and "none" not in text
    # Egress to "http": each destination pod's own number.
    assert "ip daddr @" in text and "th dport 9090 accept" in text
    assert "10.244.0.2 : jump in" in text and "10.244.0.2 : jump out" in text


def test_a_pod_that_comes_changes_elements_only() -> None:
    """A new pod (or a label change) that makes no new group updates the table's elements in
    place; a new group rewrites it whole."""
    pods = [Pod("x", f"p{i}", (IP(f"10.244.0.{i + 2}"),), {"app": "web"}) for i in range(3)]
    client = Pod("y", "c", (IP("10.244.1.2"),), {"role": "client"})
    clients = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}
    policies = [np({"podSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"from": [clients]}]})]
    before = compile_node(Cluster(policies, {}, [*pods[:2], client]), pods[:2], NETS)
    client2 = Pod("y", "c2", (IP("10.244.1.3"),), {"role": "client"})
    after = compile_node(Cluster(policies, {}, [*pods, client, client2]), pods, NETS)
    change = update(before, after)
    assert not change.startswith("table")
    assert "add element inet podnet_policy policed4 { 10.244.0.4 }" in change
    assert "add element inet podnet_policy in4 { 10.244.0.4 : jump in0 }" in change
    assert "add element inet podnet_policy s0 { 10.244.1.3 }" in change
    assert update(after, after) == ""
    other = [np({"podSelector": {}, "policyTypes": ["Egress"]}, name="q")]
    rewritten = update(after, compile_node(Cluster(policies + other, {}, pods), pods, NETS))
    assert rewritten.startswith("table")


def test_a_hundred_thousand_namespaces_cost_only_those_with_pods() -> None:
    """Hostile input: 100,000 namespaces; the table is what their pods make of it."""
    namespaces = {f"n{i}": {"team": f"t{i % 1000}"} for i in range(100_000)}
    pods = [Pod(f"n{i}", "p", (IP(f"10.244.{i // 250}.{i % 250 + 2}"),), {"app": "web"})
            for i in range(100)]
    policy = np({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "t7"}}}]}]}, namespace="n0")
    cluster = Cluster([policy], namespaces, pods)
    text = table(compile_node(cluster, pods[:1], NETS))
    assert "set s0 { type ipv4_addr; elements = { 10.244.0.9 } }" in text  # n7's pod alone
