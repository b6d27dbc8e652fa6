"""ADD and DEL latency of podnet (through the cni-server, also with the eBPF fast path to join,
with its port's source checks (antiSpoof, as the agent configures it), and in-process) against
the reference bridge + host-local (also with its macspoofchk), side by side in one run on one node,
with the interpreter's bare start as the floor. Writes bench/out/cni_latency.json and prints a
Markdown table.

    .venv/bin/python bench/cni_latency.py [--pods 100] [--baseline REV] [--dual] [--del-gap MS]

--baseline REV adds that revision's plugins and cni-server, on the same node, interleaved with
the others: a change's cost measured side by side rather than against an older run. --dual adds
pods given an IPv4 and an IPv6 address (a range set of each) through the server. --del-gap
MS (50 unless told) is a quiet time before each DEL, for the kernel to finish freeing what the
one before deleted.

--phases times one ADD through the server piece by piece instead, each piece a run of its own,
interleaved pod by pod: the host interpreter's bare start as the runtime execs it (nsenter into
the node, `python3 -IS -c pass`); the plugin answering VERSION (+ the shim's own start: its
compile, its imports); an ADD relayed to a stub server that answers at once (+ reading the
config, connecting, handing over the namespaces, the reply); the ADD through the cni-server
(+ the server's work). The reference's ADD beside them.

--agent times ADD and DEL through the agent of a lab's node (two nodes, vxlan, etcd), with the
plugin configuration the agent writes (its server's socket, antiSpoof, NetworkPolicy's pending
set and judging before the reply, the fast path), against the reference bridge + host-local,
bare and with macspoofchk, exec'd in the same node and interleaved as above; with --baseline
REV, the lab's second node runs the agent of that revision, and ADD and DEL through it join
the interleaving.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from common import bridge_conf, median, node_with_server, pct, release, source_tree

from podnet.cni.invoke import Runtime
from podnet.fastpath.node import FastPath
from podnet.lab.topology import NodeSpec
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


@contextlib.contextmanager
def stub_server(path: str) -> Iterator[None]:
    """A unix socket server that answers every request at once with an empty ADD result,
    closing the namespace descriptors it is handed (the shim's side of the relay, alone)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(64)
    reply = b'0\n{"cniVersion": "1.0.0", "interfaces": [], "ips": []}'

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                fds = array.array("i")
                while True:
                    data, anc, _, _ = conn.recvmsg(65536, socket.CMSG_LEN(16))
                    for level, kind, raw in anc:
                        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                            fds.frombytes(raw[:len(raw) - len(raw) % fds.itemsize])
                    if not data:
                        break
                for fd in fds:
                    os.close(fd)
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        srv.close()


def phases(pods: int) -> None:
    """--phases: one ADD through the server, piece by piece (module docstring)."""
    with node_with_server(pods) as node:
        rt, ipam_dir = node.runtime, os.path.join(node.work, "ipam")
        stub = os.path.join(node.work, "stub.sock")
        assert rt.node_netns is not None
        start = ["nsenter", f"--net={rt.node_netns}", "/usr/bin/python3", "-I", "-S", "-c",
                 "pass"]
        confs = {"server": bridge_conf("podnet", "pnbr0", "10.202.0.0/16", "podnet-ipam",
                                       ipam_dir, socket=node.socket),
                 "stub": bridge_conf("podnet", "pnbr1", "10.203.0.0/16", "podnet-ipam",
                                     ipam_dir, socket=stub),
                 "reference": bridge_conf("bridge", "refbr0", "10.201.0.0/16", "host-local",
                                          ipam_dir)}
        times: dict[str, list[float]] = {k: [] for k in (
            "interpreter", "version", "stub", "server", "reference")}
        with stub_server(stub):
            for i, path in enumerate(node.pods):
                times["interpreter"].append(timed_run(start))
                times["version"].append(timed_exec(rt, "podnet", "VERSION", confs["stub"]))
                times["stub"].append(timed_exec(rt, "podnet", "ADD", confs["stub"], f"s{i}",
                                                path))
                times["server"].append(timed_exec(rt, "podnet", "ADD", confs["server"],
                                                  f"c{i}", path))
                times["reference"].append(timed_exec(rt, "bridge", "ADD", confs["reference"],
                                                     f"r{i}", path, "e1"))
    p50 = {k: median(v) for k, v in times.items()}
    print("| phase of one ADD through the server | p50 ms | of which |\n|---|---|---|")
    print(f"| exec (nsenter) and the host python's start | {p50['interpreter']:.1f} | "
          f"{p50['interpreter']:.1f} |")
    print(f"| + the shim's start (compile, imports), VERSION answered | {p50['version']:.1f} | "
          f"{p50['version'] - p50['interpreter']:.1f} |")
    print(f"| + config read, connect, namespaces handed over, reply (stub server) | "
          f"{p50['stub']:.1f} | {p50['stub'] - p50['version']:.1f} |")
    print(f"| + the cni-server's work | {p50['server']:.1f} | "
          f"{p50['server'] - p50['stub']:.1f} |")
    print(f"| reference bridge + host-local ADD | {p50['reference']:.1f} | |")
    os.makedirs("bench/out", exist_ok=True)
    with open("bench/out/cni_phases.json", "w") as fh:
        json.dump({"pods": pods, "p50_ms": p50, "runs": times}, fh, indent=2)


DEL_GAP_MS = 50.0
Variant = tuple[Runtime, str, dict[str, Any]]  # the runtime, the plugin type, its config


def interleaved(variants: dict[str, Variant], pods: list[str], del_gap: float
                ) -> dict[str, dict[str, list[float]]]:
    """Each variant's ADD into every pod, then its DEL, in ms: interleaved, so that any drift of
    the machine touches every variant alike, in an order rotated pod by pod (each variant
    follows each other one equally often: what one leaves to finish, the exit of its process,
    the kernel's work on its new links, is not always met by the same next one)."""
    results: dict[str, dict[str, list[float]]] = {v: {"ADD": [], "DEL": []} for v in variants}
    order = list(enumerate(variants.items()))
    for command in ("ADD", "DEL"):
        for i, path in enumerate(pods):
            turn = i % len(order)
            for k, (name, (runtime, kind, conf)) in order[turn:] + order[:turn]:
                if command == "DEL" and del_gap:
                    # The kernel frees a deleted veth pair some 20 ms after it is gone (RCU
                    # grace periods), past the end of a DEL that does not wait for it
                    # (podnet's): that work would otherwise land in the next DEL.
                    time.sleep(del_gap / 1000)
                results[name][command].append(
                    timed_exec(runtime, kind, command, conf, f"c{i}", path, f"e{k}"))
    return results


def agent(pods: int, baseline: str | None) -> None:
    """--agent: ADD and DEL through a lab node's agent (module docstring)."""
    import tempfile

    from podnet.lab.lab import Lab, down, ns_path
    from podnet.lab.topology import Topology

    topo = Topology.make(f"lat{os.getpid() % 10000}", "vxlan", 2, 0, "switch")
    work = tempfile.mkdtemp(prefix="pnbench-")
    if baseline:
        topo.nodes[1].agent_src = source_tree(baseline, work)
    lab = Lab(topo, lambda _line: None)
    try:
        lab.up()

        def through(node: NodeSpec) -> Variant:
            conflist = lab.conflist(node)
            return lab.runtime(node), "podnet", {
                "cniVersion": conflist["cniVersion"], "name": conflist["name"],
                **conflist["plugins"][0]}

        node1 = topo.nodes[0]
        rt, ipam_dir = lab.runtime(node1), os.path.join(work, "reference-ipam")
        variants = {
            "reference bridge + host-local": (rt, "bridge", bridge_conf(
                "bridge", "refbr0", "10.201.0.0/16", "host-local", ipam_dir)),
            "reference bridge + host-local, macspoofchk": (rt, "bridge", bridge_conf(
                "bridge", "refbr1", "10.207.0.0/16", "host-local", ipam_dir,
                macspoofchk=True)),
            "podnet through the node's agent": through(node1),
        }
        if baseline:
            variants[f"podnet through the node's agent at {baseline}"] = through(topo.nodes[1])
        paths = []
        for i in range(pods):
            lab.new_ns(f"{lab.prefix}b{i}")
            paths.append(ns_path(f"{lab.prefix}b{i}"))
        results = interleaved(variants, paths, DEL_GAP_MS)
    finally:
        with contextlib.suppress(Exception):
            down(topo.name)
        shutil.rmtree(work, ignore_errors=True)
    ref = results["reference bridge + host-local"]
    print("| variant | ADD p50 ms | ADD p99 ms | DEL p50 ms | ADD p50 / reference | "
          "DEL p50 / reference |\n|---|---|---|---|---|---|")
    rows = []
    for name, r in results.items():
        row = {"variant": name, "add_p50": median(r["ADD"]), "add_p99": pct(r["ADD"], 0.99),
               "del_p50": median(r["DEL"]), "add_ratio": median(r["ADD"]) / median(ref["ADD"]),
               "del_ratio": median(r["DEL"]) / median(ref["DEL"])}
        rows.append(row)
        print(f"| {name} | {row['add_p50']:.1f} | {row['add_p99']:.1f} | {row['del_p50']:.1f} "
              f"| {row['add_ratio']:.2f} | {row['del_ratio']:.2f} |")
    os.makedirs("bench/out", exist_ok=True)
    with open("bench/out/cni_agent_latency.json", "w") as fh:
        json.dump({"pods": pods, "rows": rows}, fh, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--baseline", help="a git revision to measure beside this tree")
    parser.add_argument("--dual", action="store_true",
                        help="also pods with an address of each family, through the server")
    parser.add_argument("--phases", action="store_true",
                        help="time one ADD through the server piece by piece")
    parser.add_argument("--agent", action="store_true",
                        help="through a lab node's agent, as it configures the plugin")
    parser.add_argument("--del-gap", type=float, default=DEL_GAP_MS,
                        help="quiet milliseconds before each DEL (0: back to back)")
    args = parser.parse_args()
    if args.phases:
        phases(args.pods)
        return
    if args.agent:
        agent(args.pods, args.baseline)
        return
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
            # With the port's source checks each (the agent's conflist turns podnet's on):
            # the reference's MAC check, podnet's MAC and addresses, both in nftables.
            "reference bridge + host-local, macspoofchk": (rt, "bridge", bridge_conf(
                "bridge", "refbr1", "10.207.0.0/16", "host-local", ipam_dir,
                macspoofchk=True)),
            "podnet via cni-server, antiSpoof": (rt, "podnet", bridge_conf(
                "podnet", "pnbr5", "10.208.0.0/16", "podnet-ipam", ipam_dir,
                socket=node.socket, antiSpoof=True)),
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
            variants[f"podnet via cni-server, antiSpoof, at {args.baseline}"] = (
                old, "podnet", bridge_conf("podnet", "pnbr6", "10.209.0.0/16", "podnet-ipam",
                                           ipam_dir, socket=sock, antiSpoof=True))
        floor = [timed_run([sys.executable, "-I", "-S", "-c", "pass"]) for _ in range(50)]
        results = interleaved(variants, node.pods, args.del_gap)
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
