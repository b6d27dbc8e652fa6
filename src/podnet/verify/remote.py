"""`podnet verify --etcd`: a cluster's own agents probe, asked through the datastore (the
protocol: channel.py). The same matrix, verdict and diagnosis as a lab's verify."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from podnet.datastore.etcd import ANSWERS, EtcdStore
from podnet.errors import UserError
from podnet.podrecords import PodRecord
from podnet.verify import channel
from podnet.verify.check import Endpoint, PairResult, Probe, Report
from podnet.verify.probes import ECHO_PORT

POLL = 0.2


def families(store: EtcdStore) -> list[int]:
    """The cluster's pods' address families (NetworkConfig.families)."""
    config = store.get_config()
    if config is None:
        raise UserError("the cluster is not initialised",
                        "run `podnet cluster init` against this etcd first")
    return config.families


def endpoints(store: EtcdStore, family: int = 4) -> tuple[list[Endpoint], list[str]]:
    """Every node with a lease and every pod its agent published, by their addresses of
    `family` (Lease.address); what is wrong with them."""
    config = store.get_config()
    if config is None:
        raise UserError("the cluster is not initialised",
                        "run `podnet cluster init` against this etcd first")
    leases, _ = store.snapshot(config)
    nodes = sorted(leases.values(), key=lambda lease: lease.node)
    out = [Endpoint(n.node, "node", "", str(ip), n.node) for n in nodes
           if (ip := n.address(family)) is not None]
    problems: list[str] = []
    live = {n.node for n in nodes}
    for node, records in sorted(store.pods().items()):
        if node not in live:
            continue  # its lease (and so these records) is expiring
        pods = []
        for key, raw in records.items():
            try:
                rec = PodRecord.from_obj(json.loads(raw))
            except ValueError as exc:
                problems.append(f"node {node}: pod record {key} is not valid ({exc})")
                continue
            ips = [ip for ip in rec.ips if (":" in ip) == (family == 6)]
            if ips:
                pods.append(Endpoint(rec.display, "pod", "", ips[0], node))
        out += sorted(pods, key=lambda e: e.name)
    return out, problems


def _gather(store: EtcdStore, rid: str, step: str, nodes: set[str], deadline: float
            ) -> dict[str, Any]:
    """The answers of `nodes` to one step, as they come, until all came or the deadline."""
    got: dict[str, Any] = {}
    while True:
        for node, raw in channel.answers(store.get_prefix(ANSWERS), rid, step).items():
            if node in nodes and node not in got:
                try:
                    got[node] = json.loads(raw)
                except ValueError:
                    got[node] = {"invalid": raw[:80]}
        if set(got) >= nodes or time.monotonic() >= deadline:
            return got
        time.sleep(POLL)


def run(store: EtcdStore, timeout: float, family: int = 4, port: int = ECHO_PORT,
        ports: list[Probe] | None = None) -> tuple[Report, list[Endpoint]]:
    """`ports`: besides the echo port, what each pod serves and is probed on (the ports
    policies name)."""
    found, problems = endpoints(store, family)
    nodes = {e.node for e in found}
    if not nodes:
        raise UserError("the cluster has no nodes to verify (no agent holds a lease)",
                        "start podnet's agent on the nodes first")
    start = time.monotonic()
    rid = secrets.token_hex(6)
    lease = store.grant(int(timeout) + 30)
    try:
        store.put(channel.request_key(rid), json.dumps(
            {"port": port, "timeout": timeout, "family": family, "ports": ports or []}),
            lease)
        # Echo servers come up in well under a second; waiting long only for a dead agent.
        ready = _gather(store, rid, channel.READY, nodes, start + min(10.0, timeout / 3))
        skipped: set[str] = set()
        for node in sorted(nodes - set(ready)):
            problems.append(f"node {node}: its agent did not answer within "
                            f"{min(10.0, timeout / 3):.0f} s (is it running, and does it reach "
                            "etcd?); it and its pods were not checked")
        for _node, answer in sorted(ready.items()):
            for name, why in sorted(dict(answer.get("problems", {})).items()):
                problems.append(f"{name}: {why}")
                skipped.add(name)
        targets = [e for e in found if e.node in ready and e.name not in skipped]
        store.put(channel.go_key(rid), json.dumps(
            {"targets": [channel.endpoint_obj(e) for e in targets]}), lease)
        results = _gather(store, rid, channel.RESULT, set(ready), start + timeout)
    finally:
        store.revoke(lease)  # ends the run: its keys go, the agents close their servers
        for step in (channel.READY, channel.RESULT):  # the agents delete theirs too
            for node in channel.answers(store.get_prefix(ANSWERS), rid, step):
                store.delete(channel.answer_key(node, rid, step))
    for node in sorted(set(ready) - set(results)):
        problems.append(f"node {node}: its agent answered but had no result within "
                        f"{timeout:.0f} s (give more --timeout)")
    report = _report(results, problems)
    lacks = {node: dict(r.get("lacks", {})) for node, r in results.items()}
    report.explain(targets, lambda on, towards: list(lacks.get(on, {}).get(towards, [])))
    return report, targets


def _report(results: dict[str, Any], problems: list[str]) -> Report:
    pairs: list[PairResult] = []
    own: dict[str, bool] = {}
    mtu: list[dict[str, Any]] = []
    for node, r in sorted(results.items()):
        try:
            pairs += [PairResult(**p) for p in r["pairs"]]
            own.update({str(k): bool(v) for k, v in r["own_address"].items()})
            mtu += [dict(m) for m in r["mtu"]]
        except (KeyError, TypeError, AttributeError) as exc:
            problems.append(f"node {node}: its agent's answer is not valid ({exc!r})")
    return Report(pairs, own, mtu, problems)
