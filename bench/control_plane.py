"""One agent against etcd holding N simulated peer leases (vxlan: a route, a neighbour and an FDB
entry per peer; dual-stack: a route and a neighbour per family, one FDB entry). Measures, for
each N: agent start to every peer programmed, and to the agent ready (its CNI socket up), new
lease to its routes installed (p50/p99 over --events events), agent RSS, idle CPU; and, side
by side, the same entries programmed by `ip -batch` (iproute2) as the baseline for the
kernel-side cost. With `--families ipv4 dual`
both clusters run in turn at each N, and the table gives dual-stack's time over IPv4-only's.
podnet's modules are byte-compiled first, as pip leaves an installed wheel's.

    .venv/bin/python bench/control_plane.py --peers 100 1000 5000 [--events 100]
        [--families ipv4 dual]
"""

from __future__ import annotations

import argparse
import compileall
import errno
import ipaddress
import json
import os
import socket
import statistics
import subprocess
import threading
import time
import uuid
from typing import Any

import podnet
from podnet.datastore.etcd import EtcdStore
from podnet.lab.lab import Lab, down
from podnet.lab.topology import Topology
from podnet.netlink import codec, netns, rtmsg
from podnet.netlink.batch import raw_socket

CIDR = ipaddress.IPv4Network("10.0.0.0/8")
CIDR6 = ipaddress.IPv6Network("fd00:10::/48")  # a /64 for each /24 of CIDR
RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x40, 0x400
SO_RCVBUFFORCE = 33  # asm-generic/socket.h


def lease(i: int, dual: bool = False) -> tuple[str, str]:
    subnet = ipaddress.IPv4Network((int(CIDR.network_address) + ((i + 10) << 8), 24))
    peer_ip = ipaddress.IPv4Address(int(ipaddress.IPv4Address("172.16.0.0")) + i + 1)
    mac = f"0a:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:07:01"
    obj = {"subnet": str(subnet), "node": f"sim{i}", "nodeIP": str(peer_ip),
           "attrs": {"vtepMAC": mac}}
    if dual:
        obj["subnet6"] = str(subnet6_of(subnet))
    return f"/podnet/subnets/{subnet.network_address}-24", json.dumps(obj)


def subnet6_of(subnet: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    index = (int(subnet.network_address) - int(CIDR.network_address)) >> 8
    return ipaddress.IPv6Network((int(CIDR6.network_address) + (index << 64), 64))


def put_leases(store: EtcdStore, indices: range, dual: bool) -> None:
    store.put_all(dict(lease(i, dual) for i in indices))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def route_count(ns_path: str) -> int:
    with raw_socket(ns_path) as sock:
        return sum(1 for family in (socket.AF_INET, socket.AF_INET6)
                   for r in rtmsg.dump_routes(sock, family) if r.proto == 88)


class RouteWatcher:
    """Timestamps RTM_NEWROUTE events for given destinations, in the node's namespace."""

    def __init__(self, ns_path: str) -> None:
        with netns.entered(ns_path):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self.sock.bind((0, RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
        # FORCE: past net.core.rmem_max (208 kB unless raised), which a start's burst of
        # routes overflows; the lost notices would end the reading thread (ENOBUFS).
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                buf = self.sock.recv(1 << 20)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # notices lost: an event missed says so
                    continue
                raise
            now = time.perf_counter()
            pos = 0
            while pos + 16 <= len(buf):
                length, mtype = codec.HDR.unpack_from(buf, pos)[:2]
                if mtype == rtmsg.RTM_NEWROUTE and buf[pos + 16 + 5] == 88:  # podnet's
                    body = pos + 16
                    dst_len = buf[body + 1]
                    attrs = codec.attrs(buf, body + rtmsg.RTMSG.size, pos + length)
                    if rtmsg.RTA_DST in attrs:
                        dst = f"{codec.ntop(attrs[rtmsg.RTA_DST])}/{dst_len}"
                        with self.cond:
                            self.seen.setdefault(dst, now)
                            self.cond.notify_all()
                pos += length + (-length % 4)

    def wait(self, dst: str, timeout: float = 10) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: dst in self.seen, timeout):
                raise SystemExit(f"no route to {dst} announced within {timeout} s")
            return self.seen[dst]


def baseline_ip_batch(ns: str, n: int, dual: bool) -> float:
    """The same entries through `ip -batch` on a VXLAN device of its own."""
    dev = "bvx"
    lines, fdb = [], []
    for i in range(n):
        _, value = lease(i, dual)
        obj = json.loads(value)
        mac = obj["attrs"]["vtepMAC"]
        for subnet in [obj["subnet"]] + ([obj["subnet6"]] if dual else []):
            gw = subnet.split("/")[0]
            lines += [f"neigh replace {gw} lladdr {mac} dev {dev} nud permanent",
                      f"route replace {subnet} via {gw} dev {dev} onlink proto 89"]
        fdb.append(f"fdb append {mac} dev {dev} dst {obj['nodeIP']} self permanent")
    path = f"/var/run/netns/{ns}"
    subprocess.run(["nsenter", f"--net={path}", "ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["nsenter", f"--net={path}", "ip", "link", "add", dev, "type", "vxlan", "id",
                    "2", "dstport", "8473", "nolearning"], check=True)
    subprocess.run(["nsenter", f"--net={path}", "ip", "link", "set", dev, "up"], check=True)
    start = time.perf_counter()
    subprocess.run(["nsenter", f"--net={path}", "ip", "-batch", "-"], check=True,
                   input="\n".join(lines).encode())
    subprocess.run(["nsenter", f"--net={path}", "bridge", "-batch", "-"], check=True,
                   input="\n".join(fdb).encode())
    elapsed = time.perf_counter() - start
    subprocess.run(["nsenter", f"--net={path}", "ip", "link", "del", dev], check=True)
    return elapsed


def run_one(n: int, events: int, family: str = "ipv4") -> dict[str, Any]:
    dual = family == "dual"
    routes = 2 if dual else 1  # per peer
    topo = Topology.make(f"bc{uuid.uuid4().hex[:4]}", "vxlan", nodes=0, pods_per_node=0)
    topo.cidr, topo.cidr6, topo.ip_family = str(CIDR), str(CIDR6), family
    topo.reconcile_interval = 10.0  # the agent's default, so idle CPU is what a user sees
    lab = Lab(topo)
    base_ns = f"pnl-{topo.name}-baseline"  # not the lab's: removed here
    try:
        lab.up()
        cp = lab.target_netns("cp")
        url = topo.etcd_url
        store = EtcdStore(url, timeout=30)
        with netns.entered(cp):
            put_leases(store, range(n), dual)
        # The baseline gets a namespace of its own, a node without an agent.
        netns.create(base_ns)
        baseline = baseline_ip_batch(base_ns, n, dual)
        node = lab.add_node(start_agent=False)  # namespace and underlay: not the agent's time
        node_ns = lab.target_netns(node.name)
        # Route events, not dumps: polling 5000 routes would take the agent's CPU.
        watcher = RouteWatcher(node_ns)
        start = time.perf_counter()
        lab.start_agent(node)
        with watcher.cond:
            watcher.cond.wait_for(lambda: len(watcher.seen) >= n * routes, 60)
        converge = time.perf_counter() - start
        assert route_count(node_ns) == n * routes
        # Ready: its CNI socket is up (the fast path, policy, tunnel map and firewall set up
        # after the routes); events are timed from then on, as a running node meets them.
        while not os.path.exists(lab.socket(node)) and time.perf_counter() - start < 60:
            time.sleep(0.005)
        ready = time.perf_counter() - start
        latencies = []
        with netns.entered(cp):
            for i in range(n, n + events):
                key, value = lease(i, dual)
                obj = json.loads(value)
                t0 = time.perf_counter()
                store.put(key, value)
                # The event is programmed when its last route is.
                latencies.append((max(watcher.wait(s) for s in
                                      [obj["subnet"]] + ([obj["subnet6"]] if dual else []))
                                  - t0) * 1000)
        store.close()
        time.sleep(2)
        rss = rss_kb(node.agent_pid) / 1024
        c0 = cpu_seconds(node.agent_pid)
        time.sleep(10)
        idle_cpu = (cpu_seconds(node.agent_pid) - c0) / 10 * 100
        latencies.sort()
        return {"peers": n, "family": family, "converge_s": converge, "ready_s": ready,
                "baseline_ip_batch_s": baseline,
                "event_p50_ms": statistics.median(latencies),
                "event_p99_ms": latencies[min(len(latencies) - 1, round(0.99 * (
                    len(latencies) - 1)))], "rss_mb": rss, "idle_cpu_pct": idle_cpu}
    finally:
        down(topo.name)
        netns.remove(base_ns)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--families", nargs="+", choices=["ipv4", "dual"], default=["ipv4"])
    args = parser.parse_args()
    # The agent as a node runs it: pip byte-compiles an installed wheel's modules, so an agent
    # never compiles its source at start (a checkout's may lack the bytecode: 0.1 s).
    compileall.compile_dir(os.path.dirname(podnet.__file__), quiet=1)
    rows = [run_one(n, args.events, family) for n in args.peers for family in args.families]
    print("| peers | family | start to all programmed (s) | ip -batch baseline (s) | ratio | "
          "start to ready (s) | event p50 (ms) | event p99 (ms) | RSS (MB) | idle CPU (%) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['peers']} | {r['family']} | {r['converge_s']:.2f} | "
              f"{r['baseline_ip_batch_s']:.2f} | "
              f"{r['converge_s'] / r['baseline_ip_batch_s']:.2f} | {r['ready_s']:.2f} | "
              f"{r['event_p50_ms']:.1f} | "
              f"{r['event_p99_ms']:.1f} | {r['rss_mb']:.1f} | {r['idle_cpu_pct']:.2f} |")
    by = {(r["peers"], r["family"]): r for r in rows}
    for n in args.peers:
        if (n, "ipv4") in by and (n, "dual") in by:
            print(f"\n{n} peers: dual-stack programmed in "
                  f"{by[n, 'dual']['converge_s'] / by[n, 'ipv4']['converge_s']:.2f} times the "
                  "IPv4-only time (twice the routes and neighbours)")
    os.makedirs("bench/out", exist_ok=True)
    name = "control_plane" if args.families == ["ipv4"] else "control_plane_families"
    with open(f"bench/out/{name}.json", "w") as fh:
        json.dump(rows, fh, indent=2)
    if args.families == ["ipv4"] and len(rows) > 1:  # the figure of docs/benchmarks.md
        plot(rows, "docs/img/control_plane.png")


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = [r["peers"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(peers, [r["converge_s"] for r in rows], "o-", label="podnet agent: start to all")
    a.plot(peers, [r["baseline_ip_batch_s"] for r in rows], "s--", label="ip -batch (baseline)")
    a.set_xlabel("peers")
    a.set_ylabel("seconds")
    a.set_title("Programming every peer")
    a.legend()
    b.plot(peers, [r["rss_mb"] for r in rows], "o-", color="tab:green")
    b.set_xlabel("peers")
    b.set_ylabel("agent RSS (MB)")
    b.set_title("Agent memory")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
