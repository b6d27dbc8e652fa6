"""The data plane against the underlay, per backend, side by side in one lab: TCP throughput
(iperf3, one stream and four) and latency (ICMP echo, TCP 1-byte request/response), pod to pod
across nodes against node to node on the same underlay and, for host-gw and vxlan, against pods
wired the way flannel wires them (flannel_like.py); several repetitions, medians.

The underlay's links are shaped to `--link-gbit` (3) like NICs (see shape_links); with
`--link-gbit 0` they are as fast as the CPU, and throughput measures CPU cost per byte; each
path's CPU time per Gbit moved (all CPUs, from /proc/stat) is reported beside it.

With `--pin` every iperf3 client runs on CPU 0 and every server on CPU 1, on every path alike:
unshaped, where the scheduler puts the two ends (and so which CPU carries a flow's softirq
work) moves a run by a third; pinned, the ratio is the paths' own cost.

With `--families ipv4 ipv6` each backend is measured twice in the run: IPv4 pods over the IPv4
underlay, then the IPv6 pods of a dual-stack cluster over an IPv6-only underlay (the
flannel-like pods are IPv4 only).

    .venv/bin/python bench/dataplane.py [--backends ...] [--reps 5] [--link-gbit 3]
                                        [--fast-path off] [--families ipv4 ipv6] [--pin]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import flannel_like

from podnet.lab.lab import Lab, down, ns_path
from podnet.lab.topology import Topology
from podnet.netlink import links, netns
from podnet.verify import probes

PORT = 5201
RR_PORT = 7947


def listening(pid: int, port: int) -> bool:
    """Whether process pid's network namespace has a TCP socket listening on port."""
    try:
        with open(f"/proc/{pid}/net/tcp") as fh:
            rows = [line.split() for line in fh.readlines()[1:]]
    except FileNotFoundError:
        return False
    return any(r[1].endswith(f":{port:04X}") and r[3] == "0A" for r in rows)


def iperf(src_ns: str, dst_ns: str, dst_ip: str, streams: int, seconds: int,
          pin: bool = False) -> float:
    """Gbit/s received."""
    return iperf_run(src_ns, dst_ns, dst_ip, streams, seconds, pin)[0]


def iperf_run(src_ns: str, dst_ns: str, dst_ip: str, streams: int,
              seconds: int, pin: bool = False) -> tuple[float, int]:
    """Gbit/s received, and the sender's TCP retransmissions; with `pin`, the client on CPU 0
    and the server on CPU 1."""
    client_cpu, server_cpu = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if pin \
        else ([], [])
    server = subprocess.Popen(["nsenter", f"--net={dst_ns}", *server_cpu, "iperf3", "-s", "-p",
                               str(PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Wait for its listening socket without connecting: a probe connection would hold
        # up iperf3's next test by seconds.
        for _ in range(100):
            if listening(server.pid, PORT):
                break
            time.sleep(0.02)
        out = subprocess.run(["nsenter", f"--net={src_ns}", *client_cpu, "iperf3", "-c",
                              dst_ip, "-p", str(PORT), "-t", str(seconds), "-P", str(streams),
                              "-J"],
                             capture_output=True, text=True, check=True, timeout=seconds + 30)
        report = json.loads(out.stdout)
        if "error" in report:
            raise RuntimeError(f"iperf3 to {dst_ip}: {report['error']}")
        end = report["end"]
        return (float(end["sum_received"]["bits_per_second"]) / 1e9,
                int(end["sum_sent"].get("retransmits", 0)))
    finally:
        server.kill()
        server.wait()


def busy_cpu_seconds() -> float:
    """CPU time spent since boot by all CPUs on anything but idling (user, nice, system, irq,
    softirq from /proc/stat; not iowait, nor steal: time the hypervisor took)."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:8]]
    return (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]) / os.sysconf("SC_CLK_TCK")


ECHO_SERVER = """
import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", PORT))
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
    client = probes.socket_in(src_ns, probes.family_of(dst_ip), socket.SOCK_STREAM)
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


def icmp_rtts_us(src_ns: str, dst_ip: str, count: int) -> list[float]:
    out = subprocess.run(["nsenter", f"--net={src_ns}", "ping", "-c", str(count), "-i",
                          "0.001", dst_ip], capture_output=True, text=True, check=True).stdout
    return [float(m.group(1)) * 1e3 for m in re.finditer(r"time=([0-9.]+)", out)]


def icmp_rtt_us(paths: dict[str, tuple[str, str]], rounds: int = 10,
                count: int = 100) -> dict[str, tuple[float, float]]:
    """ICMP echo round trip per path (source namespace, destination), 10th percentile and
    median: the kernel answers, so this is the network's own latency. The paths take turns in
    short rounds, so the machine's drift (this VM's neighbours) falls on all of them alike
    rather than on whichever ran during a slow second. The median also holds the wake-ups of
    idle CPUs; the 10th percentile is the path's steady cost."""
    rtts: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for k, (src_ns, dst_ip) in paths.items():
            rtts[k] += icmp_rtts_us(src_ns, dst_ip, count)
    out = {}
    for k, values in rtts.items():
        values.sort()
        out[k] = values[len(values) // 10], statistics.median(values)
    return out


def shape_links(lab: Lab, gbit: float) -> None:
    """Make the underlay's links gbit/s wide, as a NIC is: a token bucket on each switch (or
    router) port towards a node. Unshaped, a veth is as fast as the CPU, so every extra hop
    of any pod network costs throughput; shaped, the question is a user's: how much of the
    link do pods get."""
    hub = lab.prefix + ("sw" if lab.topo.underlay == "switch" else "rt")
    ipr = netns.iproute_in(ns_path(hub))
    try:
        for node in lab.topo.nodes:
            index = links.index_of(ipr, node.name)
            # A burst of 1 MB holds 16 of the 64 KB segments TSO hands a veth.
            ipr.tc("add", "tbf", index, handle=0x10000, rate=f"{int(gbit * 1000)}mbit",
                   burst=1 << 20, latency="5ms")
    finally:
        ipr.close()


PATHS = ("node", "pod", "ref")


def measure(backend: str, reps: int, seconds: int, link_gbit: float,
            fast_path: bool, family: str = "ipv4", pin: bool = False) -> dict[str, Any]:
    underlay = "routed" if backend == "gateway" else "switch"
    topo = Topology.make(f"dp{uuid.uuid4().hex[:4]}", backend, 2, 1, underlay)
    topo.fast_path = fast_path
    topo.ip_family = "dual" if family == "ipv6" else "ipv4"
    topo.underlay_family = family
    lab = Lab(topo)
    try:
        lab.up()
        n1, n2 = (ns_path(n.netns(topo.name)) for n in topo.nodes)
        p1, p2 = (ns_path(p.netns(topo.name)) for p in topo.pods)
        ends = {"node": (n1, n2, topo.node_ip(topo.nodes[1])),
                "pod": (p1, p2, topo.pods[1].ips[-1])}  # IPv6 last in a dual-stack lab
        if backend in ("host-gw", "vxlan") and family == "ipv4":
            (r1, _), (r2, r2_ip) = flannel_like.build(lab, backend)
            ends["ref"] = (r1, r2, r2_ip)
        if link_gbit:
            shape_links(lab, link_gbit)
        time.sleep(1)
        res: dict[str, list[float]] = {f"{k}_{m}": [] for k in ends for m in (
            "1", "4", "cpu1", "cpu4", "icmp10", "icmp50", "rr")}
        for _ in range(reps):  # interleaved: each path once per repetition
            for streams in (1, 4):
                for k, (a, b, ip) in ends.items():
                    before = busy_cpu_seconds()
                    gbit = iperf(a, b, ip, streams, seconds, pin)
                    res[f"{k}_{streams}"].append(gbit)
                    # CPU ms per Gbit moved: unshaped, what bounds throughput is CPU time
                    # (one stream's path runs on one CPU), and this is its price per byte.
                    res[f"{k}_cpu{streams}"].append(
                        (busy_cpu_seconds() - before) * 1000 / (gbit * seconds))
            icmp = icmp_rtt_us({k: (a, ip) for k, (a, _b, ip) in ends.items()})
            for k, (a, b, ip) in ends.items():
                res[f"{k}_icmp10"].append(icmp[k][0])
                res[f"{k}_icmp50"].append(icmp[k][1])
                res[f"{k}_rr"].append(rr_latency_us(a, b, ip))
        med: dict[str, Any] = {k: statistics.median(v) for k, v in res.items()}
        med["backend"] = backend
        med["family"] = family
        for m in ("1", "4"):
            med[f"ratio_{m}"] = med[f"pod_{m}"] / med[f"node_{m}"]
            med[f"cost_ratio_{m}"] = med[f"node_cpu{m}"] / med[f"pod_cpu{m}"]
        for m in ("icmp10", "icmp50", "rr"):
            med[f"over_{m}"] = med[f"pod_{m}"] / med[f"node_{m}"] - 1
        if "ref" in ends:
            for m in ("1", "4"):
                med[f"vs_ref_{m}"] = med[f"pod_{m}"] / med[f"ref_{m}"]
            for m in ("icmp10", "icmp50", "rr"):
                med[f"vs_ref_{m}"] = med[f"pod_{m}"] / med[f"ref_{m}"] - 1
        return med
    finally:
        down(topo.name)


def _name(r: dict[str, Any], family: bool) -> str:
    return f"{r['backend']} {r['family']}" if family else str(r["backend"])


def _fmt(r: dict[str, Any], key: str, spec: str) -> str:
    return format(r[key], spec) if key in r else "-"


def _table(title: str, columns: tuple[str, ...], lines: list[tuple[str, ...]]) -> None:
    """A markdown table under its title line, and a blank line."""
    print(title)
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for cells in lines:
        print("| " + " | ".join(cells) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", nargs="+", default=["vxlan", "host-gw", "l2", "gateway"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--link-gbit", type=float, default=3.0,
                        help="the underlay links' width; 0: unshaped, as fast as the CPU")
    parser.add_argument("--fast-path", choices=["on", "off"], default="on",
                        help="podnet's eBPF fast path (docs/fastpath.md)")
    parser.add_argument("--families", nargs="+", choices=["ipv4", "ipv6"], default=["ipv4"],
                        help="ipv6: a dual-stack cluster's IPv6 pods over an IPv6-only "
                             "underlay")
    parser.add_argument("--pin", action="store_true",
                        help="every path's iperf3 client on CPU 0, server on CPU 1")
    args = parser.parse_args()
    fast = args.fast_path == "on"
    rows = [measure(b, args.reps, args.seconds, args.link_gbit, fast, f, args.pin)
            for b in args.backends for f in args.families]
    family = len(args.families) > 1  # a column of its own
    print(f"Underlay links: {f'{args.link_gbit:g} Gbit/s' if args.link_gbit else 'unshaped'}; "
          f"{args.reps} repetitions of {args.seconds} s; podnet's fast path {args.fast_path}"
          f"{'; iperf3 pinned (client CPU 0, server CPU 1)' if args.pin else ''}")
    _table("Throughput (Gbit/s, median); ratio = podnet pods / underlay; vs ref = podnet pods / "
           "flannel-like pods",
           ("backend", "streams", "underlay", "podnet pods", "ratio", "flannel-like pods",
            "vs ref"),
           [(_name(r, family), m, f"{r[f'node_{m}']:.2f}", f"{r[f'pod_{m}']:.2f}",
             f"{r[f'ratio_{m}']:.2f}", _fmt(r, f"ref_{m}", ".2f"), _fmt(r, f"vs_ref_{m}", ".2f"))
            for r in rows for m in ("1", "4")])
    _table("CPU per Gbit moved (ms of all CPUs' time, median); cost ratio = underlay / podnet "
           "pods: the throughput ratio were both paths given the same CPU time",
           ("backend", "streams", "underlay", "podnet pods", "cost ratio", "flannel-like pods"),
           [(_name(r, family), m, f"{r[f'node_cpu{m}']:.0f}", f"{r[f'pod_cpu{m}']:.0f}",
             f"{r[f'cost_ratio_{m}']:.2f}", _fmt(r, f"ref_cpu{m}", ".0f"))
            for r in rows for m in ("1", "4")])
    _table("Latency (us; medians over the repetitions); overhead = podnet pods / underlay - 1; "
           "vs ref = podnet pods / flannel-like pods - 1",
           ("backend", "probe", "underlay", "podnet pods", "overhead", "flannel-like pods",
            "vs ref"),
           [(_name(r, family), name, f"{r[f'node_{m}']:.0f}", f"{r[f'pod_{m}']:.0f}",
             f"{r[f'over_{m}'] * 100:+.0f}%", _fmt(r, f"ref_{m}", ".0f"),
             _fmt(r, f"vs_ref_{m}", "+.0%"))
            for r in rows for m, name in (("icmp10", "ICMP echo p10"),
                                          ("icmp50", "ICMP echo p50"),
                                          ("rr", "TCP 1-byte RR p50"))])
    os.makedirs("bench/out", exist_ok=True)
    tag = f"{args.link_gbit:g}gbit" if args.link_gbit else "unshaped"
    tag += "" if fast else "-nofast"
    tag += "" if args.families == ["ipv4"] else "-" + "-".join(args.families)
    tag += "-pinned" if args.pin else ""
    with open(f"bench/out/dataplane-{tag}.json", "w") as fh:
        json.dump({"link_gbit": args.link_gbit, "reps": args.reps, "seconds": args.seconds,
                   "fast_path": fast, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
