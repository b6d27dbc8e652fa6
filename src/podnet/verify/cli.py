"""`podnet verify`: a lab's (probing from this host into its namespaces), or any cluster's
through its datastore (its agents probe, remote.py)."""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from podnet.datastore.args import add_args, from_args
from podnet.errors import UserError
from podnet.verify.check import (
    Endpoint,
    Expect,
    Probe,
    Report,
    endpoints_of,
    families,
    render,
    run,
)

if TYPE_CHECKING:
    from podnet.cli import Parser
    from podnet.lab.lab import Lab
    from podnet.policy.store import Objects


def lab_objects(lab: Lab) -> Objects:
    """The lab's policies, labels and published pods, from its etcd."""
    from podnet.lab.lab import ns_path
    from podnet.netlink import netns
    from podnet.policy.store import Objects

    with netns.entered(ns_path(lab.prefix + "cp")):  # the store's sockets open there
        kv = lab.etcd_store()
        try:
            return Objects.read(kv)
        finally:
            kv.close()


def lab_report(lab: Lab, family: int = 4, objects: Objects | None = None
               ) -> tuple[Report, list[Endpoint]]:
    """One family's checks of a lab, held to what its policies (in its etcd, or `objects`
    read from it) expect."""
    from podnet.lab.lab import status
    from podnet.verify.policy import expectation

    st = status(lab)
    mtu = lab.conflist(lab.topo.nodes[0])["plugins"][0].get("mtu") if lab.topo.nodes else None
    if objects is None:
        objects = lab_objects(lab)
    endpoints = endpoints_of(st, family)
    expect, ports = expectation(objects, st["pods"], family)
    return run(endpoints, st, mtu, family, expect, ports), endpoints


def _lab(name: str) -> list[tuple[str, Report, list[Endpoint]]]:
    from podnet.lab.lab import Lab, status

    lab = Lab.load(name)
    if not lab.topo.nodes:
        raise UserError(f"lab {name} has no nodes to verify",
                        f"add one with `podnet lab add-node --name {name}`")
    if missing := lab.missing():
        raise UserError(f"lab {name} is damaged: {', '.join(missing)} no longer exist",
                        f"`podnet lab down --name {name}`, then up again")
    objects = lab_objects(lab)
    return [(f"ipv{family}", *lab_report(lab, family, objects))
            for family in families(status(lab))]


def _cluster(args: argparse.Namespace) -> list[tuple[str, Report, list[Endpoint]]]:
    from podnet.datastore.etcd import EtcdStore
    from podnet.policy.store import Objects
    from podnet.verify import remote

    if not (math.isfinite(args.timeout) and 5 <= args.timeout <= 600):
        raise UserError(f"--timeout {args.timeout} is out of range", "give 5 to 600 seconds")
    store = from_args(args)
    if not isinstance(store, EtcdStore):
        raise UserError("verify through the datastore needs etcd: a file store has one node "
                        "and no agents to ask", "give --etcd http(s)://HOST:PORT")
    try:
        objects = Objects.read(store)
        runs = []
        for family in remote.families(store):
            expect, ports = _expectation(objects, family)
            report, targets = remote.run(store, args.timeout, family, ports=ports)
            if expect is not None:
                _hold_to_policy(report, targets, expect)
            runs.append((f"ipv{family}", report, targets))
        return runs
    finally:
        store.close()


def _expectation(objects: Objects, family: int) -> tuple[Expect | None, list[Probe]]:
    """What policy expects of the pods the agents published, and the ports it names."""
    from podnet.policy.store import pod_identity
    from podnet.verify.policy import expectation

    pods: list[Mapping[str, Any]] = [
        {"namespace": identity[0], "pod_name": identity[1], "ips": record.ips,
         "node": key.partition("/")[0]}
            for key, record in objects.pods.items() for identity in [pod_identity(record)]]
    return expectation(objects, pods, family)


def _hold_to_policy(report: Report, targets: list[Endpoint], expect: Expect) -> None:
    """The agents probed; policy judges what they saw (their pairs carry the address each
    node sent from)."""
    from podnet.verify.check import judge

    by_name = {e.name: e for e in targets}
    for pair in report.pairs:
        if pair.src in by_name and pair.dst in by_name:
            judge(pair, by_name[pair.src], by_name[pair.dst], expect)
    for m in report.mtu:  # full-size pings cross where policy lets ICMP through
        if m["src"] in by_name and m["dst"] in by_name:
            allowed = expect(by_name[m["src"]], by_name[m["dst"]], "ICMP", 0)[0]
            m["ok"] = m["ok"] == allowed


def cmd(args: argparse.Namespace) -> int:
    if args.etcd is not None and args.lab_given:
        raise UserError("--lab and --etcd name two clusters", "give one of them")
    runs = _cluster(args) if args.etcd is not None else _lab(args.lab)
    if args.json:
        # The first family's report at the top, as before dual-stack; each under its name.
        first = runs[0][1].to_json()
        print(json.dumps(first | {"ok": all(r.ok for _, r, _ in runs)}
                         | {name: r.to_json() for name, r, _ in runs[1:]}, indent=2))
    for name, report, endpoints in [] if args.json else runs:
        if len(runs) > 1:
            print(f"{name}:")
        if endpoints:
            print(render(report, endpoints))
        else:
            print("\n".join(f"FAIL {p}" for p in report.problems) or "nothing to verify")
    return 0 if all(r.ok for _, r, _ in runs) else 1


class _Given(argparse.Action):
    """--lab, remembering that it was given (its default comes from the environment)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.lab_given = True


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    from podnet.lab.cli import lab_name_arg

    p = sub.add_parser("verify", help="prove pod<->pod and node<->pod connect without NAT")
    p.add_argument("--lab", type=lab_name_arg, action=_Given,
                   default=os.environ.get("PODNET_LAB", "lab"),
                   help="the lab to verify (default: $PODNET_LAB, else lab)")
    add_args(p, default=None)
    p.add_argument("--timeout", type=float, default=60.0,
                   help="with --etcd: seconds to wait for every node's agent")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=cmd, lab_given=False)
