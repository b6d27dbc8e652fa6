"""What NetworkPolicy expects of each pair verify probes: the cluster's policies, namespaces'
labels and pods' metadata (from etcd) with the endpoints' addresses, evaluated by the one
evaluator (podnet.policy.model) that enforcement answers to as well."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from podnet.policy.model import IP, Pod, Policy
from podnet.policy.store import Objects
from podnet.verify import probes
from podnet.verify.check import Endpoint, Expect, Probe

MAX_PORTS = 8  # ports policies name that verify probes besides its echo port


def expectation(objects: Objects, pods: list[Mapping[str, Any]], family: int
                ) -> tuple[Expect | None, list[Probe]]:
    """The Expect for these pods (status entries: name, ips, node, namespace, pod_name) and
    the ports policies name; (None, []) where there is no policy (everything connects)."""
    if not objects.policies:
        return None, []
    members = []
    for p in pods:
        labels, ports = objects.meta.get(f"{p['namespace']}/{p['pod_name']}", ({}, {}))
        members.append(Pod(p["namespace"], p["pod_name"],
                           tuple(ipaddress.ip_address(ip) for ip in p["ips"]), labels, ports,
                           p["node"]))
    cluster = objects.cluster(members)
    by_ip = {str(ip): pod for pod in members for ip in pod.ips}

    def expect(src: Endpoint, dst: Endpoint, protocol: str,
               port: int) -> tuple[bool, tuple[str, ...]]:
        """`src` as it sent: a node with the address its route picked."""
        if src.node == dst.node and "node" in (src.kind, dst.kind):
            return True, ()  # a pod and its own node: never judged (kubelet's probes)
        s: Pod | IP = (ipaddress.ip_address(src.ip) if src.kind == "node"
                       else by_ip.get(src.ip) or ipaddress.ip_address(src.ip))
        d = by_ip.get(dst.ip) or ipaddress.ip_address(dst.ip)
        verdict = cluster.allowed(s, d, protocol, port, family)
        return verdict.allowed, verdict.policies

    return expect, _probes(cluster.policies, members)


def _probes(policies: list[Policy], pods: list[Pod]) -> list[Probe]:
    """Each port the policies name, by protocol (a range by its ends; a named port as the
    pods that have it number it), but the echo port; at most MAX_PORTS."""
    wanted: set[Probe] = set()
    for rule in (r for policy in policies for r in policy.ingress + policy.egress):
        for x in rule.ports:
            if isinstance(x.port, int):
                wanted |= {(x.protocol, n) for n in (x.port, x.end_port or x.port)}
            elif x.port is not None:
                wanted |= {pod.ports[x.port] for pod in pods
                           if pod.ports.get(x.port, ("", 0))[0] == x.protocol}
    wanted.discard(("TCP", probes.ECHO_PORT))
    return sorted(wanted)[:MAX_PORTS]
