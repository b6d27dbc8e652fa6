"""Where policy's objects live in the datastore (etcd, under podnet's prefix, as Calico's etcd
datastore keeps its policies and workload endpoints), and the cluster they make together with
the pod records the agents publish:

- `/podnet/policies/<namespace>/<name>`: a NetworkPolicy in the API's form (k8s.to_k8s);
- `/podnet/namespaces/<namespace>`: `{"labels": {...}}`;
- `/podnet/podmeta/<namespace>/<name>`: a pod's `{"labels": {...}, "ports": {name: [protocol,
  number]}}`, set by name, before or after the pod exists (its labels apply from its first
  packet);
- `/podnet/pods/<node>/<key>`: the pods themselves (podnet.podrecords, published by agents).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any, Protocol

from podnet.datastore.etcd import PODS, PREFIX
from podnet.podrecords import PodRecord
from podnet.policy import k8s
from podnet.policy.model import DEFAULT_NAMESPACE, Cluster, Pod, Policy

POLICIES = PREFIX + "policies/"
NAMESPACES = PREFIX + "namespaces/"
POD_META = PREFIX + "podmeta/"
PREFIXES = (POLICIES, NAMESPACES, POD_META, PODS)


class KV(Protocol):
    """What policy needs of the store (EtcdStore has it)."""

    def get(self, key: str) -> str | None: ...

    def get_prefix(self, prefix: str) -> dict[str, str]: ...

    def put_all(self, items: Mapping[str, str]) -> None: ...

    def delete(self, key: str) -> None: ...


def pod_identity(record: PodRecord) -> tuple[str, str]:
    """A pod's namespace and name: Kubernetes' from CNI_ARGS, else namespace `default` and
    the container ID (PodRecord.name already is)."""
    return record.namespace or DEFAULT_NAMESPACE, record.name


class Objects:
    """Policies, namespaces' labels and pods' metadata as read from their keys; a key's
    change is applied with `update` (a watch's), a bad value is dropped (the writer
    validated it; a hand-written one must not stop a node's enforcement)."""

    def __init__(self) -> None:
        self.policies: dict[str, Policy] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.meta: dict[str, tuple[dict[str, str], dict[str, tuple[str, int]]]] = {}
        self.pods: dict[str, PodRecord] = {}  # by "<node>/<key>"

    @classmethod
    def read(cls, store: KV) -> Objects:
        out = cls()
        for prefix in PREFIXES:
            for key, value in store.get_prefix(prefix).items():
                out.update(key, value)
        return out

    def update(self, key: str, value: str | None) -> bool:
        """Apply one key's change; whether it is policy's."""
        prefix = next((p for p in PREFIXES if key.startswith(p)), None)
        if prefix is None:
            return False
        tables: dict[str, Any] = {POLICIES: self.policies, NAMESPACES: self.namespaces,
                                  POD_META: self.meta, PODS: self.pods}
        name = key[len(prefix):]
        parsed = None if value is None else _parse(prefix, name, value)
        if parsed is None:
            tables[prefix].pop(name, None)
        else:
            tables[prefix][name] = parsed
        return True

    def pod(self, node: str, record: PodRecord) -> Pod:
        namespace, name = pod_identity(record)
        labels, ports = self.meta.get(f"{namespace}/{name}", ({}, {}))
        return Pod(namespace, name, tuple(ipaddress.ip_address(ip) for ip in record.ips),
                   labels, ports, node)

    def published(self, but: str = "") -> list[Pod]:
        """The pods the agents published, those of node `but` left out."""
        return [self.pod(node, r) for key, r in sorted(self.pods.items())
                if (node := key.partition("/")[0]) != but]

    def cluster(self, pods: list[Pod] | None = None) -> Cluster:
        """The policies and namespaces, with `pods` (default: every published one)."""
        return Cluster(sorted(self.policies.values(), key=lambda p: p.key),
                       dict(self.namespaces), self.published() if pods is None else pods)


def _parse(prefix: str, name: str, value: str) -> Any:
    try:
        obj = json.loads(value)
        if prefix == POLICIES:
            return k8s.policy_from_k8s(obj)
        if prefix == NAMESPACES:
            return k8s.labels(obj.get("labels"), "labels")
        if prefix == POD_META:
            return (k8s.labels(obj.get("labels"), "labels"), _ports(obj.get("ports")))
        return PodRecord.from_obj(obj)
    except (ValueError, AttributeError, TypeError):
        return None


def _ports(obj: Any) -> dict[str, tuple[str, int]]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ValueError("ports is an object")
    return {str(k): (str(v[0]), int(v[1])) for k, v in obj.items()}


# -- writing: `podnet policy` and `podnet label` ---------------------------------------------
def apply_policies(store: KV, policies: list[Policy]) -> None:
    store.put_all({POLICIES + p.key: json.dumps(k8s.to_k8s(p), sort_keys=True)
                   for p in policies})


def delete_policy(store: KV, key: str) -> bool:
    """Whether it was there."""
    if store.get(POLICIES + key) is None:
        return False
    store.delete(POLICIES + key)
    return True


def set_namespace_labels(store: KV, namespace: str, labels: dict[str, str]) -> None:
    store.put_all({NAMESPACES + namespace: json.dumps({"labels": labels}, sort_keys=True)})


def namespace_labels(store: KV, namespace: str) -> dict[str, str]:
    raw = store.get(NAMESPACES + namespace)
    return {} if raw is None else dict(_parse(NAMESPACES, namespace, raw) or {})


def pod_meta(store: KV, key: str) -> tuple[dict[str, str], dict[str, tuple[str, int]]]:
    raw = store.get(POD_META + key)
    parsed = None if raw is None else _parse(POD_META, key, raw)
    return parsed if parsed is not None else ({}, {})


def set_pod_meta(store: KV, key: str, labels: dict[str, str],
                 ports: dict[str, tuple[str, int]]) -> None:
    store.put_all({POD_META + key: json.dumps(
        {"labels": labels, "ports": {k: list(v) for k, v in ports.items()}}, sort_keys=True)})
