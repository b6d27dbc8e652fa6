"""The data plane against the underlay, per backend, side by side in one lab: TCP throughput
(iperf3, one stream and four) and request/response latency, pod to pod across nodes against node
to node on the same underlay; several repetitions, medians.

    .venv/bin/python bench/dataplane.py [--backends vxlan host-gw l2 gateway] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid

from podnet.lab.lab import Lab, down, ns_path
from podnet.lab.topology import Topology
from podnet.verify import probes

PORT = 5201
RR_PORT = 7947


def iperf(src_ns: str, dst_ns: str, dst_ip: str, streams: int, seconds: int) -> float:
    server = subprocess.Popen(["nsenter", f"--net={dst_ns}", "iperf3", "-s", "-p",
                               str(PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                probes.tcp_seen_source(src_ns, dst_ip, PORT, timeout=0.2)
            except OSError:
                time.sleep(0.05)
                continue
            break
        out = subprocess.run(["nsenter", f"--net={src_ns}", "iperf3", "-c", dst_ip, "-p",
                              str(PORT), "-t", str(seconds), "-P", str(streams), "-J"],
                             capture_output=True, text=True, check=True, timeout=seconds + 30)
        return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.kill()
        server.wait()


ECHO_SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", PORT))
s.listen(1)
conn, _ = s.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while data := conn.recv(1):
    conn.sendall(data)
""".replace("PORT", str(RR_PORT))


def rr_latency_us(src_ns: str, dst_ns: str, dst_ip: str, count: int = 2000) -> float:
    """Median round trip of a 1-byte request and reply on one TCP connection; the echo server
    is a process of its own, so no interpreter lock sits between the two ends."""
    server = subprocess.Popen(["nsenter", f"--net={dst_ns}", sys.executable, "-c",
                               ECHO_SERVER])
    client = probes.socket_in(src_ns, socket.AF_INET, socket.SOCK_STREAM)
    samples = []
    try:
        with client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(100):
                if client.connect_ex((dst_ip, RR_PORT)) == 0:
                    break
                time.sleep(0.05)
            for _ in range(count):
                t0 = time.perf_counter()
                client.sendall(b"x")
                client.recv(1)
                samples.append((time.perf_counter() - t0) * 1e6)
    finally:
        server.kill()
        server.wait()
    return statistics.median(samples)


def icmp_rtt_us(src_ns: str, dst_ip: str, count: int = 500) -> float:
    """Average ICMP echo round trip: the kernel answers, so this is the network's own latency."""
    out = subprocess.run(["nsenter", f"--net={src_ns}", "ping", "-q", "-c", str(count), "-i",
                          "0.002", dst_ip], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1].split("=")[1].split("/")[1]) * 1000


def measure(backend: str, reps: int, seconds: int) -> dict[str, float]:
    underlay = "routed" if backend == "gateway" else "switch"
    topo = Topology.make(f"dp{uuid.uuid4().hex[:4]}", backend, 2, 1, underlay)
    lab = Lab(topo)
    try:
        lab.up()
        n1, n2 = (ns_path(n.netns(topo.name)) for n in topo.nodes)
        p1, p2 = (ns_path(p.netns(topo.name)) for p in topo.pods)
        pod2_ip = topo.pods[1].ip
        node2_ip = topo.node_ip(topo.nodes[1])
        time.sleep(1)
        res: dict[str, list[float]] = {k: [] for k in (
            "node_1", "pod_1", "node_4", "pod_4", "node_rr", "pod_rr", "node_icmp",
            "pod_icmp")}
        for _ in range(reps):  # interleaved: underlay, then pods, each repetition
            res["node_1"].append(iperf(n1, n2, node2_ip, 1, seconds))
            res["pod_1"].append(iperf(p1, p2, pod2_ip, 1, seconds))
            res["node_4"].append(iperf(n1, n2, node2_ip, 4, seconds))
            res["pod_4"].append(iperf(p1, p2, pod2_ip, 4, seconds))
            res["node_rr"].append(rr_latency_us(n1, n2, node2_ip))
            res["pod_rr"].append(rr_latency_us(p1, p2, pod2_ip))
            res["node_icmp"].append(icmp_rtt_us(n1, node2_ip))
            res["pod_icmp"].append(icmp_rtt_us(p1, pod2_ip))
        med = {k: statistics.median(v) for k, v in res.items()}
        return {"backend": backend, **med,
                "ratio_1": med["pod_1"] / med["node_1"], "ratio_4": med["pod_4"] / med["node_4"],
                "latency_overhead": med["pod_icmp"] / med["node_icmp"] - 1,
                "rr_overhead": med["pod_rr"] / med["node_rr"] - 1}
    finally:
        down(topo.name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", nargs="+", default=["vxlan", "host-gw", "l2", "gateway"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    rows = [measure(b, args.reps, args.seconds) for b in args.backends]
    print("| backend | underlay 1 stream (Gbit/s) | pods 1 stream | ratio | underlay 4 streams |"
          " pods 4 streams | ratio | underlay ICMP RTT (us) | pods ICMP RTT (us) | overhead |"
          " underlay TCP RR (us) | pods TCP RR (us) | overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['node_1']:.2f} | {r['pod_1']:.2f} | {r['ratio_1']:.2f} | "
              f"{r['node_4']:.2f} | {r['pod_4']:.2f} | {r['ratio_4']:.2f} | "
              f"{r['node_icmp']:.0f} | {r['pod_icmp']:.0f} | {r['latency_overhead'] * 100:+.0f}% "
              f"| {r['node_rr']:.0f} | {r['pod_rr']:.0f} | {r['rr_overhead'] * 100:+.0f}% |")
    os.makedirs("bench/out", exist_ok=True)
    with open("bench/out/dataplane.json", "w") as fh:
        json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
