"""ADD and DEL latency of podnet (through the cni-server, and in-process) against the reference
bridge + host-local, side by side in one run on one node, with the interpreter's bare start as
the floor. Writes bench/out/cni_latency.json and prints a Markdown table.

    .venv/bin/python bench/cni_latency.py [--pods 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from podnet.cni.invoke import Runtime
from podnet.install import install_cni
from podnet.netlink import netns


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


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
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:4]
    work = tempfile.mkdtemp(prefix="pnbench-")
    node_name = f"pnb-{tag}-node"
    pods = [f"pnb-{tag}-p{i}" for i in range(args.pods)]
    server = None
    try:
        node = netns.create(node_name)
        paths = [netns.create(p) for p in pods]
        bin_dir = os.path.join(work, "bin")
        install_cni(bin_dir)
        sock = os.path.join(work, "cni.sock")
        server = subprocess.Popen(["nsenter", f"--net={node}", sys.executable, "-m", "podnet",
                                   "cni-server", "--socket", sock])
        while not os.path.exists(sock):
            time.sleep(0.05)
        rt = Runtime(path=[bin_dir, "/usr/lib/cni"], node_netns=node)

        def conf(kind: str, bridge: str, subnet: str, ipam: str, **extra: object) -> dict:
            return {"cniVersion": "1.0.0", "name": f"bench-{kind}", "type": kind,
                    "bridge": bridge, "isDefaultGateway": True, **extra,
                    "ipam": {"type": ipam, "subnet": subnet,
                             "dataDir": os.path.join(work, "ipam")}}

        variants = {
            "reference bridge + host-local": ("bridge", conf("bridge", "refbr0",
                                                             "10.201.0.0/16", "host-local")),
            "podnet via cni-server": ("podnet", conf("podnet", "pnbr0", "10.202.0.0/16",
                                                     "podnet-ipam", socket=sock)),
            "podnet in-process": ("podnet", conf("podnet", "pnbr1", "10.203.0.0/16",
                                                 "podnet-ipam")),
        }
        floor = [timed_run([sys.executable, "-I", "-S", "-c", "pass"]) for _ in range(50)]
        results: dict[str, dict[str, list[float]]] = {v: {"ADD": [], "DEL": []}
                                                       for v in variants}
        # Interleaved, so that any drift of the machine touches every variant alike.
        for i, path in enumerate(paths):
            for name, (kind, c) in variants.items():
                ifname = f"e{list(variants).index(name)}"
                results[name]["ADD"].append(timed_exec(rt, kind, "ADD", c, f"c{i}", path, ifname))
        for i, path in enumerate(paths):
            for name, (kind, c) in variants.items():
                ifname = f"e{list(variants).index(name)}"
                results[name]["DEL"].append(timed_exec(rt, kind, "DEL", c, f"c{i}", path, ifname))
    finally:
        if server:
            server.terminate()
            server.wait()
        for name in [node_name, *pods]:
            netns.remove(name)
    ref = statistics.median(results["reference bridge + host-local"]["ADD"])
    rows = []
    print(f"floor: python -I -S -c pass p50 {statistics.median(floor):.1f} ms\n")
    print("| variant | ADD p50 ms | ADD p99 ms | DEL p50 ms | DEL p99 ms | ADD p50 / reference |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        row = {"variant": name, "add_p50": statistics.median(r["ADD"]),
               "add_p99": pct(r["ADD"], 0.99), "del_p50": statistics.median(r["DEL"]),
               "del_p99": pct(r["DEL"], 0.99)}
        row["ratio"] = row["add_p50"] / ref
        rows.append(row)
        print(f"| {name} | {row['add_p50']:.1f} | {row['add_p99']:.1f} | {row['del_p50']:.1f} "
              f"| {row['del_p99']:.1f} | {row['ratio']:.2f} |")
    os.makedirs("bench/out", exist_ok=True)
    with open("bench/out/cni_latency.json", "w") as fh:
        json.dump({"pods": args.pods, "floor_p50": statistics.median(floor), "rows": rows}, fh,
                  indent=2)


if __name__ == "__main__":
    main()
