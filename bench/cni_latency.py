"""ADD and DEL latency of podnet (through the cni-server, also with the eBPF fast path to join,
and in-process) against the reference bridge + host-local, side by side in one run on one node,
with the interpreter's bare start as the floor. Writes bench/out/cni_latency.json and prints a
Markdown table.

    .venv/bin/python bench/cni_latency.py [--pods 100] [--baseline REV] [--dual]

--baseline REV adds that revision's plugins and cni-server, on the same node, interleaved with
the others: a change's cost measured side by side rather than against an older run. --dual adds
pods given an IPv4 and an IPv6 address (a range set of each) through the server.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import time

from common import bridge_conf, median, node_with_server, pct, release

from podnet.cni.invoke import Runtime
from podnet.fastpath.node import FastPath
from podnet.netlink import links, netns


def attach_fast_path(node_ns: str, bridge: str, cidr: str) -> str:
    """The fast path as an agent attaches it, on a stand-in uplink; the uplink's name."""
    with netns.entered(node_ns):
        ipr = netns.iproute_in(None)
        try:
            ipr.link("add", ifname="up0", kind="veth", peer={"ifname": "up1"})
            index = links.index_of(ipr, "up0")
            assert index is not None
            ipr.link("set", index=index, state="up")
        finally:
            ipr.close()
        FastPath(bridge, 1500, ipaddress.IPv4Network(cidr)).reconcile([index])
    return "up0"


def timed_run(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return (time.perf_counter() - start) * 1000


def timed_exec(rt: Runtime, *args: object) -> float:
    start = time.perf_counter()
    out = rt.exec(*args)  # type: ignore[arg-type]
    elapsed = (time.perf_counter() - start) * 1000
    if out.code != 0:
        raise SystemExit(f"failed: {out.stdout}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--baseline", help="a git revision to measure beside this tree")
    parser.add_argument("--dual", action="store_true",
                        help="also pods with an address of each family, through the server")
    args = parser.parse_args()
    with node_with_server(args.pods) as node, contextlib.ExitStack() as stack:
        rt, ipam_dir = node.runtime, os.path.join(node.work, "ipam")
        variants = {
            "reference bridge + host-local": (rt, "bridge", bridge_conf(
                "bridge", "refbr0", "10.201.0.0/16", "host-local", ipam_dir)),
            "podnet via cni-server": (rt, "podnet", bridge_conf(
                "podnet", "pnbr0", "10.202.0.0/16", "podnet-ipam", ipam_dir,
                socket=node.socket)),
            "podnet in-process": (rt, "podnet", bridge_conf(
                "podnet", "pnbr1", "10.203.0.0/16", "podnet-ipam", ipam_dir)),
            "podnet via cni-server, fast path": (rt, "podnet", bridge_conf(
                "podnet", "pnbr2", "10.204.0.0/16", "podnet-ipam", ipam_dir,
                socket=node.socket, fastPathUplink=attach_fast_path(
                    node.runtime.node_netns, "pnbr2", "10.204.0.0/16"))),
        }
        if args.dual:
            dual = bridge_conf("podnet", "pnbr4", "10.206.0.0/16", "podnet-ipam", ipam_dir,
                               socket=node.socket)
            dual["ipam"] = {"type": "podnet-ipam", "dataDir": ipam_dir, "ranges": [
                [{"subnet": "10.206.0.0/16"}], [{"subnet": "fd00:206::/64"}]]}
            variants["podnet via cni-server, dual-stack"] = (rt, "podnet", dual)
        if args.baseline:
            assert rt.node_netns is not None
            bin_dir, sock = stack.enter_context(release(args.baseline, rt.node_netns,
                                                        node.work))
            old = Runtime(path=[bin_dir, "/usr/lib/cni"], node_netns=rt.node_netns)
            variants[f"podnet via cni-server at {args.baseline}"] = (old, "podnet", bridge_conf(
                "podnet", "pnbr3", "10.205.0.0/16", "podnet-ipam", ipam_dir, socket=sock))
        floor = [timed_run([sys.executable, "-I", "-S", "-c", "pass"]) for _ in range(50)]
        results: dict[str, dict[str, list[float]]] = {v: {"ADD": [], "DEL": []}
                                                       for v in variants}
        # Interleaved, so that any drift of the machine touches every variant alike.
        for command in ("ADD", "DEL"):
            for i, path in enumerate(node.pods):
                for k, (name, (runtime, kind, c)) in enumerate(variants.items()):
                    results[name][command].append(
                        timed_exec(runtime, kind, command, c, f"c{i}", path, f"e{k}"))
    ref = median(results["reference bridge + host-local"]["ADD"])
    rows = []
    print(f"floor: python -I -S -c pass p50 {median(floor):.1f} ms\n")
    print("| variant | ADD p50 ms | ADD p99 ms | DEL p50 ms | DEL p99 ms | ADD p50 / reference |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        row = {"variant": name, "add_p50": median(r["ADD"]), "add_p99": pct(r["ADD"], 0.99),
               "del_p50": median(r["DEL"]), "del_p99": pct(r["DEL"], 0.99)}
        row["ratio"] = row["add_p50"] / ref
        rows.append(row)
        print(f"| {name} | {row['add_p50']:.1f} | {row['add_p99']:.1f} | {row['del_p50']:.1f} "
              f"| {row['del_p99']:.1f} | {row['ratio']:.2f} |")
    os.makedirs("bench/out", exist_ok=True)
    with open("bench/out/cni_latency.json", "w") as fh:
        json.dump({"pods": args.pods, "floor_p50": median(floor), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
