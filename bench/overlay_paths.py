"""One path per overlay flow: two vxlan labs side by side (2 nodes, a pod each, unshaped
underlay), podnet's fast path on in one and off in the other, interleaved. Per repetition and
stream count (1, 4): pod-to-pod TCP throughput (iperf3) and the sender's retransmissions in
each lab, the node-to-node underlay in the first (the physical limit here, and its own
retransmissions: a CPU-bound veth path loses segments at any speed), and the packets
that crossed the VXLAN devices of the fast lab's nodes meanwhile (the program encapsulates and
decapsulates every packet of a flow, segmentation-offload super-packets included: none should).

    .venv/bin/python bench/overlay_paths.py [--reps 5] [--seconds 4] [--family ipv4]
        [--receive-steering] [--pin]

With --receive-steering both labs steer every flow where a veth receives it (the lab's links
as NICs with RSS, the pods' host veths by the agents' conflists): no path reorders a flow, so
what retransmits is what drops. With --pin every iperf3 client runs on CPU 0 and every server
on CPU 1, on every path alike (dataplane.py).

Writes bench/out/overlay_paths.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from typing import Any

from dataplane import iperf_run, shape_links

from podnet.lab.lab import Lab, down, ns_path
from podnet.lab.topology import Topology
from podnet.netlink import links, netns


def device_packets(lab: Lab) -> int:
    """Packets the nodes' VXLAN devices received and sent."""
    total = 0
    for node in lab.topo.nodes:
        ipr = netns.iproute_in(ns_path(node.netns(lab.topo.name)))
        try:
            index = links.index_of(ipr, "podnet.1")
            assert index is not None
            stats = ipr.get_links(index)[0].get_attr("IFLA_STATS64")
            total += int(stats["rx_packets"]) + int(stats["tx_packets"])
        finally:
            ipr.close()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--link-gbit", type=float, default=0.0,
                        help="shape the underlay's links (0: unshaped, CPU-bound)")
    parser.add_argument("--family", choices=["ipv4", "ipv6"], default="ipv4",
                        help="the underlay's (and the pods', for ipv6: dual-stack pods)")
    parser.add_argument("--receive-steering", action="store_true",
                        help="flows steered over the CPUs where veths receive them")
    parser.add_argument("--pin", action="store_true",
                        help="every path's iperf3 client on CPU 0, server on CPU 1")
    args = parser.parse_args()
    labs: dict[str, Lab] = {}
    try:
        for mode in ("on", "off"):
            topo = Topology.make(f"op{uuid.uuid4().hex[:4]}", "vxlan", 2, 1)
            topo.fast_path = mode == "on"
            topo.ip_family = "dual" if args.family == "ipv6" else "ipv4"
            topo.underlay_family = args.family
            topo.receive_steering = args.receive_steering
            labs[mode] = Lab(topo)
            labs[mode].up()
            if args.link_gbit:
                shape_links(labs[mode], args.link_gbit)
        time.sleep(1)
        rows: dict[str, list[float]] = {}

        def ends(lab: Lab, what: str) -> tuple[str, str, str]:
            t = lab.topo
            if what == "node":
                return (*(ns_path(n.netns(t.name)) for n in t.nodes),  # type: ignore[return-value]
                        t.node_ip(t.nodes[1]))
            return (ns_path(t.pods[0].netns(t.name)), ns_path(t.pods[1].netns(t.name)),
                    t.pods[1].ips[-1])

        for _ in range(args.reps):
            for streams in (1, 4):
                gbit, retrans = iperf_run(*ends(labs["on"], "node"), streams, args.seconds,
                                          args.pin)
                rows.setdefault(f"underlay_{streams}", []).append(gbit)
                rows.setdefault(f"underlay_{streams}_retrans", []).append(retrans)
                for mode, lab in labs.items():
                    before = device_packets(lab)
                    gbit, retrans = iperf_run(*ends(lab, "pod"), streams, args.seconds,
                                              args.pin)
                    rows.setdefault(f"{mode}_{streams}", []).append(gbit)
                    rows.setdefault(f"{mode}_{streams}_retrans", []).append(retrans)
                    rows.setdefault(f"{mode}_{streams}_device", []).append(
                        device_packets(lab) - before)
    finally:
        for lab in labs.values():
            down(lab.topo.name)
    shaping = f"{args.link_gbit:g} Gbit/s links" if args.link_gbit else "unshaped"
    result: dict[str, Any] = {"reps": args.reps, "seconds": args.seconds,
                              "family": args.family, "link_gbit": args.link_gbit,
                              "receive_steering": args.receive_steering, "pinned": args.pin,
                              "runs": rows}
    os.makedirs(os.path.join(os.path.dirname(__file__), "out"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "out",
                           f"overlay_paths-{args.family}-{shaping.split()[0]}"
                           f"{'-steered' if args.receive_steering else ''}"
                           f"{'-pinned' if args.pin else ''}.json"), "w") as fh:
        json.dump(result, fh, indent=2)

    def cell(key: str, spec: str) -> str:
        v = rows[key]
        return f"{statistics.median(v):{spec}} ({min(v):{spec}}-{max(v):{spec}})"

    steering = ", flows steered" if args.receive_steering else ""
    steering += ", iperf3 pinned (client CPU 0, server CPU 1)" if args.pin else ""
    print(f"vxlan over {args.family}, {shaping}{steering}; {args.reps} repetitions of "
          f"{args.seconds} s; median (range)\n")
    print("| streams | underlay Gbit/s | retransmissions | fast path Gbit/s | ratio | "
          "retransmissions | VXLAN device packets | without the fast path Gbit/s | "
          "retransmissions |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in (1, 4):
        ratio = statistics.median(rows[f"on_{m}"]) / statistics.median(rows[f"underlay_{m}"])
        print(f"| {m} | {cell(f'underlay_{m}', '.2f')} | "
              f"{cell(f'underlay_{m}_retrans', '.0f')} | {cell(f'on_{m}', '.2f')} | "
              f"{ratio:.2f} | {cell(f'on_{m}_retrans', '.0f')} | "
              f"{cell(f'on_{m}_device', '.0f')} | {cell(f'off_{m}', '.2f')} | "
              f"{cell(f'off_{m}_retrans', '.0f')} |")


if __name__ == "__main__":
    main()
