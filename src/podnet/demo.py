"""`podnet demo` (what `make demo` runs): a 3-node VXLAN lab with 2 pods per node, verified pair
by pair, drawn, and taken down again unless asked to keep it."""

from __future__ import annotations

import os
import sys
import time

from podnet.lab.diagram import draw
from podnet.lab.lab import Lab, down, status
from podnet.lab.topology import Topology
from podnet.verify.check import endpoints_of, render, run

DIAGRAM = "podnet-demo.png"


def main(keep: bool = False, name: str = "demo", backend: str = "vxlan") -> int:
    start = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    down(name)  # a leftover of an earlier run
    lab = Lab(Topology.make(name, backend, nodes=3, pods_per_node=2), say)
    try:
        lab.up()
        st = status(lab)
        mtu = lab.conflist(lab.topo.nodes[0])["plugins"][0].get("mtu")
        say("verifying every pair")
        endpoints = endpoints_of(st)
        report = run(endpoints, st, mtu)
        print(render(report, endpoints))
        diagram = os.path.abspath(DIAGRAM)
        draw(lab, diagram)
        print(f"\nDiagram of the live topology: {diagram}")
        print(f"Explore: podnet lab exec --name {name} node1-p1 -- ping -c1 "
              f"{st['pods'][-1]['ip']}   |   podnet lab status --name {name}")
        if keep:
            print(f"The lab is kept; remove it with: podnet lab down --name {name}")
        return 0 if report.ok else 1
    finally:
        if not keep:
            say("taking the lab down (keep it with: make demo KEEP=1)")
            down(name)
