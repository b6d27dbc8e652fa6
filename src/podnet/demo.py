"""`podnet demo` (what `make demo` runs): a 3-node dual-stack VXLAN lab with 2 pods per node,
verified pair by pair in each family, drawn, and taken down again unless asked to keep it."""

from __future__ import annotations

import os
import sys
import time

from podnet.backends import registry
from podnet.lab.diagram import draw
from podnet.lab.lab import Lab, down, status
from podnet.lab.topology import Topology
from podnet.verify.check import endpoints_of, families, render, run

DIAGRAM = "podnet-demo.png"


def main(keep: bool = False, name: str = "demo", backend: str = "vxlan") -> int:
    start = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    down(name)  # a leftover of an earlier run
    topo = Topology.make(name, backend, nodes=3, pods_per_node=2)
    if registry.spec(backend).dual_stack:
        topo.ip_family = "dual"
    lab = Lab(topo, say)
    try:
        lab.up()
        st = status(lab)
        mtu = lab.conflist(lab.topo.nodes[0])["plugins"][0].get("mtu")
        ok = True
        for family in families(st):
            say(f"verifying every pair over IPv{family}")
            endpoints = endpoints_of(st, family)
            report = run(endpoints, st, mtu, family)
            print(f"IPv{family}:\n{render(report, endpoints)}\n")
            ok = ok and report.ok
        diagram = os.path.abspath(DIAGRAM)
        draw(lab, diagram)
        print(f"\nDiagram of the live topology: {diagram}")
        print(f"Explore: podnet lab exec --name {name} node1-p1 -- ping -c1 "
              f"{st['pods'][-1]['ip']}   |   podnet lab status --name {name}")
        if keep:
            print(f"The lab is kept; remove it with: podnet lab down --name {name}")
        return 0 if ok else 1
    finally:
        if not keep:
            say("taking the lab down (keep it with: make demo KEEP=1)")
            down(name)
