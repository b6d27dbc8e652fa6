"""`podnet verify`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from podnet.lab.lab import Lab, status
from podnet.verify.check import endpoints_of, render, run


def cmd(args: argparse.Namespace) -> int:
    try:
        lab = Lab.load(args.lab)
    except KeyError as exc:
        print(f"podnet verify: {exc.args[0]}", file=sys.stderr)
        return 2
    st = status(lab)
    mtu = None
    if lab.topo.nodes:
        mtu = lab.conflist(lab.topo.nodes[0])["plugins"][0].get("mtu")
    endpoints = endpoints_of(st)
    report = run(endpoints, st, mtu)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render(report, endpoints))
    return 0 if report.ok else 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("verify", help="prove pod<->pod and node<->pod connect without NAT")
    p.add_argument("--lab", default=os.environ.get("PODNET_LAB", "lab"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd)
