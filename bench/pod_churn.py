"""200 pods created and deleted, 8 at a time, on one node: pods per second of podnet (through
its cni-server) against the reference bridge + host-local doing the same, in the same run.

    .venv/bin/python bench/pod_churn.py [--pods 200] [--parallel 8]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from common import bridge_conf, node_with_server


def churn(node: object, kind: str, conf: dict[str, object], ifname: str, parallel: int
          ) -> tuple[float, float]:
    rt = node.runtime  # type: ignore[attr-defined]
    pods = node.pods  # type: ignore[attr-defined]

    def step(command: str) -> float:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            outs = list(pool.map(lambda i: rt.exec(kind, command, conf, f"c{i}", pods[i],
                                                   ifname), range(len(pods))))
        bad = [o.stdout for o in outs if o.code != 0]
        if bad:
            raise SystemExit(f"{kind} {command} failed: {bad[0]}")
        return time.perf_counter() - start

    return step("ADD"), step("DEL")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {"reference bridge + host-local": [],
                                    "podnet via cni-server": []}
    with node_with_server(args.pods) as node:
        ipam = os.path.join(node.work, "ipam")
        variants = {
            "reference bridge + host-local": ("bridge", bridge_conf(
                "bridge", "refbr0", "10.201.0.0/16", "host-local", ipam), "r0"),
            "podnet via cni-server": ("podnet", bridge_conf(
                "podnet", "pnbr0", "10.202.0.0/16", "podnet-ipam", ipam,
                socket=node.socket), "p0"),
        }
        for _ in range(args.rounds):  # alternating rounds, medians
            for name, (kind, conf, ifname) in variants.items():
                add, delete = churn(node, kind, conf, ifname, args.parallel)
                rows[name].append(args.pods / (add + delete))
    ref_rows = sorted(rows["reference bridge + host-local"])
    ref = ref_rows[len(ref_rows) // 2]
    print(f"{args.pods} pods created and deleted, {args.parallel} in parallel, "
          f"median of {args.rounds} rounds\n")
    print("| variant | pods/s (ADD+DEL) | ratio to reference |")
    print("|---|---|---|")
    out = []
    for name, values in rows.items():
        med = sorted(values)[len(values) // 2]
        out.append({"variant": name, "pods_per_s": med, "ratio": med / ref})
        print(f"| {name} | {med:.1f} | {med / ref:.2f} |")
    os.makedirs("bench/out", exist_ok=True)
    with open("bench/out/pod_churn.json", "w") as fh:
        json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
