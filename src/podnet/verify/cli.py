"""`podnet verify`."""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING

from podnet.errors import UserError
from podnet.lab.lab import Lab, status
from podnet.verify.check import endpoints_of, render, run

if TYPE_CHECKING:
    from podnet.cli import Parser


def cmd(args: argparse.Namespace) -> int:
    lab = Lab.load(args.lab)
    if not lab.topo.nodes:
        raise UserError(f"lab {args.lab} has no nodes to verify",
                        f"add one with `podnet lab add-node --name {args.lab}`")
    if missing := lab.missing():
        raise UserError(f"lab {args.lab} is damaged: {', '.join(missing)} no longer exist",
                        f"`podnet lab down --name {args.lab}`, then up again")
    st = status(lab)
    mtu = lab.conflist(lab.topo.nodes[0])["plugins"][0].get("mtu")
    endpoints = endpoints_of(st)
    report = run(endpoints, st, mtu)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render(report, endpoints))
    return 0 if report.ok else 1


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    from podnet.lab.cli import lab_name_arg

    p = sub.add_parser("verify", help="prove pod<->pod and node<->pod connect without NAT")
    p.add_argument("--lab", type=lab_name_arg, default=os.environ.get("PODNET_LAB", "lab"),
                   help="the lab to verify (default: $PODNET_LAB, else lab)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=cmd)
