"""NetworkPolicy's costs, side by side in one lab (host-gw, 2 nodes, fast path on), with a
cluster of simulated pods (records and labels in etcd under nodes that do not exist: every
agent compiles them into its sets, as it would another node's pods):

- policy change to enforced on every node: a policy naming a new port is written to etcd; each
  node's table is read until it holds the port (each node has a pod the policy selects); p50
  and p99 over --trials, for each cluster size in --pods, with --policies policies;
- pod ADD through the agent's CNI server (the runtime's exec of the plugin included), with
  --policies policies against none, in alternating rounds;
- an isolated pod's allowed connection (policy lets the client in) against an unisolated pod
  on the same node: TCP throughput (iperf3), TCP request-reply and ICMP round trips,
  interleaved, each round's figure kept (the program carries an isolated pod's established
  TCP connections; its ICMP is judged by the normal path);
- agent RSS with --rss-pods pods and --rss-policies policies;
- hostile input: --namespaces labelled namespaces written at once; then policy change to
  enforced (as above) and agent RSS.

    .venv/bin/python bench/netpol.py [--pods 1000 3000 10000] [--trials 20] [--adds 30]
                                     [--parts add enforce dataplane rss namespaces]

Writes bench/out/netpol.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import threading
import time
import uuid
from typing import Any

from dataplane import icmp_rtt_us, iperf, rr_latency_us

from podnet.lab.lab import Lab, down, ns_path
from podnet.lab.topology import PodSpec, Topology
from podnet.netlink import netns
from podnet.policy import k8s, store

PARTS = ["add", "enforce", "dataplane", "rss", "namespaces"]
SIM_PREFIX = "/podnet/pods/sim"  # fake nodes' pods: sim<k>/<key>


def put_pods(lab: Lab, count: int) -> None:
    """`count` simulated pods (10.250.0.0/16 on, 20 namespaces, 50 apps, 5 tiers), their
    labels set; the earlier simulated pods and labels replaced."""
    with netns.entered(ns_path(lab.prefix + "cp")):
        kv = lab.etcd_store()
        try:
            kv.delete_prefix(SIM_PREFIX)
            items = {}
            for i in range(count):
                ns, name = f"ns{i % 20}", f"p{i}"
                ip = f"10.{250 + i // 65536}.{(i // 256) % 256}.{i % 256}"
                items[f"{SIM_PREFIX}{i // 100}/v{i}"] = json.dumps({
                    "container_id": f"c{i}", "ifname": "eth0", "namespace": ns, "name": name,
                    "addresses": [f"{ip}/16"], "netns": ""})
                items[f"{store.POD_META}{ns}/{name}"] = json.dumps(
                    {"labels": {"app": f"a{i % 50}", "tier": f"t{i % 5}"}, "ports": {}})
            kv.put_all(items)
        finally:
            kv.close()


def put_namespaces(lab: Lab, count: int) -> None:
    """`count` labelled namespaces (none has a pod), half of them matching every namespace
    selector the benchmark's policies hold."""
    with netns.entered(ns_path(lab.prefix + "cp")):
        kv = lab.etcd_store()
        try:
            kv.put_all({f"{store.NAMESPACES}n{i}": json.dumps(
                {"labels": {"team": ("blue", "red")[i % 2], "i": str(i)}})
                for i in range(count)})
        finally:
            kv.close()


def policies(count: int) -> list[dict[str, Any]]:
    """`count` policies in the simulated namespaces: an app's pods let in a tier's."""
    return [{"apiVersion": k8s.API_VERSION, "kind": k8s.KIND,
             "metadata": {"name": f"np{k}", "namespace": f"ns{k % 20}"},
             "spec": {"podSelector": {"matchLabels": {"app": f"a{k % 50}"}},
                      "ingress": [{"from": [{"namespaceSelector": {},
                                             "podSelector": {"matchLabels": {
                                                 "tier": f"t{k % 5}"}}}],
                                   "ports": [{"port": 8000 + k % 1000}]}]}}
            for k in range(count)]


def set_policies(lab: Lab, objs: list[dict[str, Any]], delete_first: bool = True) -> None:
    with netns.entered(ns_path(lab.prefix + "cp")):
        kv = lab.etcd_store()
        try:
            if delete_first:
                kv.delete_prefix(store.POLICIES)
            if objs:
                store.apply_policies(kv, [k8s.policy_from_k8s(o) for o in objs])
        finally:
            kv.close()


def table_has(lab: Lab, node: str, needle: str) -> bool:
    out = subprocess.run(["nsenter", f"--net={lab.target_netns(node)}", "nft", "-t", "list",
                          "table", "inet", "podnet_policy"], capture_output=True, text=True)
    return needle in out.stdout


def enforcement(lab: Lab, trials: int) -> list[float]:
    """Seconds from a policy's write to the last node holding it, per trial."""
    out = []
    for t in range(trials):
        port = 30000 + t
        probe = {"apiVersion": k8s.API_VERSION, "kind": k8s.KIND,
                 "metadata": {"name": f"probe{t}", "namespace": "x"},
                 "spec": {"podSelector": {"matchLabels": {"role": "probe"}},
                          "ingress": [{"ports": [{"port": port}]}]}}
        done: dict[str, float] = {}
        start = time.monotonic()

        def watch(node: str, port: int = port, done: dict[str, float] = done,
                  start: float = start) -> None:
            while time.monotonic() - start < 30:
                if table_has(lab, node, f"dport {port} accept"):
                    done[node] = time.monotonic() - start
                    return
                time.sleep(0.005)

        threads = [threading.Thread(target=watch, args=(n.name,)) for n in lab.topo.nodes]
        for th in threads:
            th.start()
        set_policies(lab, [probe], delete_first=False)
        for th in threads:
            th.join()
        assert len(done) == len(lab.topo.nodes), f"not enforced everywhere: {done}"
        out.append(max(done.values()))
        with netns.entered(ns_path(lab.prefix + "cp")):
            kv = lab.etcd_store()
            try:
                store.delete_policy(kv, f"x/probe{t}")
            finally:
                kv.close()
        time.sleep(0.2)
    return out


def add_latency(lab: Lab, node: str, count: int) -> list[float]:
    """ADD (and DEL) of `count` pods through the node's plugins, each ADD timed."""
    spec = lab.topo.node(node)
    rt, conflist = lab.runtime(spec), lab.conflist(spec)
    times = []
    for i in range(count):
        name = f"{lab.prefix}b{uuid.uuid4().hex[:6]}"
        lab.new_ns(name)
        rt.extra_env["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=ns{i % 20};" \
                                   f"K8S_POD_NAME=bench{i}"
        t0 = time.perf_counter()
        rt.add_list(conflist, name, ns_path(name))
        times.append(time.perf_counter() - t0)
        rt.del_list(conflist, name, ns_path(name))
        netns.remove(name)
        lab.topo.netns_made.remove(name)
        lab.save()
    return times


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return kb / 1024


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--policies", type=int, default=100)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--adds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rss-pods", type=int, default=10000)
    parser.add_argument("--rss-policies", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=100_000)
    parser.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS)
    args = parser.parse_args()
    topo = Topology.make(f"np{uuid.uuid4().hex[:4]}", "host-gw", 2, 0)
    topo.check()
    lab = Lab(topo)
    result: dict[str, Any] = {"policies": args.policies}
    try:
        lab.up()
        pods: dict[str, PodSpec] = {}
        for node, name, labels in (("node1", "a", {"role": "probe", "pod": "a"}),
                                   ("node1", "d", {"pod": "d"}),
                                   ("node2", "b", {"role": "probe", "pod": "b"}),
                                   ("node2", "c", {"pod": "c"})):
            pods[name] = lab.add_pod(node, "x", name, labels)

        # -- ADD with and without policies, alternating rounds ------------------------------
        put_pods(lab, min(args.pods))
        adds: dict[str, list[float]] = {"none": [], "with": []}
        for _ in range(args.rounds if "add" in args.parts else 0):
            for key, objs in (("none", []), ("with", policies(args.policies))):
                set_policies(lab, objs)
                time.sleep(1)
                adds[key] += add_latency(lab, "node1", args.adds // args.rounds)
        if "add" in args.parts:
            result["add_p50_ms"] = {k: statistics.median(v) * 1e3 for k, v in adds.items()}
            result["add_p99_ms"] = {k: pct(v, 99) * 1e3 for k, v in adds.items()}
            result["add_ratio"] = result["add_p50_ms"]["with"] / result["add_p50_ms"]["none"]

        # -- policy change to enforced, per cluster size -------------------------------------
        result["enforce"] = {}
        for count in args.pods if "enforce" in args.parts else []:
            put_pods(lab, count)
            set_policies(lab, policies(args.policies))
            time.sleep(2)
            took = enforcement(lab, args.trials)
            result["enforce"][count] = {"p50_ms": statistics.median(took) * 1e3,
                                        "p99_ms": pct(took, 99) * 1e3,
                                        "max_ms": max(took) * 1e3}
            print(f"{count} pods: enforced p50 {result['enforce'][count]['p50_ms']:.0f} ms, "
                  f"p99 {result['enforce'][count]['p99_ms']:.0f} ms", flush=True)

        # -- an isolated pod's allowed connection against an unisolated pod's ----------------
        if "dataplane" in args.parts:
            result.update(dataplane(lab, pods, args.rounds, args.seconds))

        # -- agent RSS at scale ---------------------------------------------------------------
        if "rss" in args.parts:
            put_pods(lab, args.rss_pods)
            set_policies(lab, policies(args.rss_policies))
            time.sleep(5)
            result["rss"] = {"pods": args.rss_pods, "policies": args.rss_policies,
                             "mb": max(rss_mb(n.agent_pid) for n in lab.topo.nodes)}

        # -- hostile input: namespaces by the hundred thousand ----------------------------
        if "namespaces" in args.parts:
            put_pods(lab, min(args.pods))
            set_policies(lab, policies(args.policies))
            put_namespaces(lab, args.namespaces)
            time.sleep(5)
            took = enforcement(lab, args.trials)
            result["namespaces"] = {
                "count": args.namespaces, "pods": min(args.pods), "policies": args.policies,
                "p50_ms": statistics.median(took) * 1e3, "p99_ms": pct(took, 99) * 1e3,
                "mb": max(rss_mb(n.agent_pid) for n in lab.topo.nodes)}
    finally:
        down(topo.name)
    os.makedirs(os.path.join(os.path.dirname(__file__), "out"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "out", "netpol.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    report(result, args.policies)


def dataplane(lab: Lab, pods: dict[str, PodSpec], rounds: int,
              seconds: int) -> dict[str, Any]:
    """From c (node2), to a (isolated, c let in) and to d (open), both on node1."""
    name = lab.topo.name
    set_policies(lab, [{"apiVersion": k8s.API_VERSION, "kind": k8s.KIND,
                        "metadata": {"name": "let-c-in", "namespace": "x"},
                        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                                 "ingress": [{"from": [{"podSelector": {
                                     "matchLabels": {"pod": "c"}}}]}]}}])
    time.sleep(2)
    c = ns_path(pods["c"].netns(name))
    ends = {"isolated": pods["a"], "open": pods["d"]}
    tput: dict[str, list[float]] = {k: [] for k in ends}
    rr: dict[str, list[float]] = {k: [] for k in ends}
    icmp: dict[str, list[float]] = {f"{k}_{m}": [] for k in ends for m in ("p10", "p50")}
    for _ in range(rounds):
        for k, pod in ends.items():
            tput[k].append(iperf(c, ns_path(pod.netns(name)), pod.ip, 1, seconds))
            rr[k].append(rr_latency_us(c, ns_path(pod.netns(name)), pod.ip))
        rtt = icmp_rtt_us({k: (c, pod.ip) for k, pod in ends.items()})
        for k in ends:
            icmp[f"{k}_p10"].append(rtt[k][0])
            icmp[f"{k}_p50"].append(rtt[k][1])
    gbit = {k: statistics.median(v) for k, v in tput.items()}
    return {"gbit": gbit, "gbit_all": tput, "tput_ratio": gbit["isolated"] / gbit["open"],
            "tcp_rr_us": {k: statistics.median(v) for k, v in rr.items()}, "tcp_rr_all": rr,
            "icmp_us": {k: statistics.median(v) for k, v in icmp.items()}}


def report(result: dict[str, Any], policies: int) -> None:
    if "add_p50_ms" in result:
        a = result["add_p50_ms"]
        print(f"\n| pod ADD | no policy | {policies} policies | ratio |\n|---|---|---|---|\n"
              f"| p50 ms | {a['none']:.1f} | {a['with']:.1f} | {result['add_ratio']:.2f} |\n"
              f"| p99 ms | {result['add_p99_ms']['none']:.1f} | "
              f"{result['add_p99_ms']['with']:.1f} | |")
    if result["enforce"]:
        print("\n| simulated pods | enforced p50 ms | p99 ms | max ms |\n|---|---|---|---|")
        for count, e in result["enforce"].items():
            print(f"| {count} | {e['p50_ms']:.0f} | {e['p99_ms']:.0f} | {e['max_ms']:.0f} |")
    if "gbit" in result:
        g, i, rr = result["gbit"], result["icmp_us"], result["tcp_rr_us"]
        spread = {k: f"{min(v):.1f}-{max(v):.1f}" for k, v in result["gbit_all"].items()}
        print("\n| pod on node1, from c on node2 | Gbit/s (runs) | TCP RR us | "
              "ICMP p10 / p50 us |\n|---|---|---|---|")
        for k, title in (("isolated", "isolated (allowed by policy)"), ("open", "open")):
            print(f"| {title} | {g[k]:.2f} ({spread[k]}) | {rr[k]:.0f} | "
                  f"{i[k + '_p10']:.0f} / {i[k + '_p50']:.0f} |")
        print(f"| ratio | {result['tput_ratio']:.2f} | "
              f"{rr['isolated'] / rr['open']:.2f} | |")
    if "rss" in result:
        r = result["rss"]
        print(f"\nagent RSS with {r['pods']} pods and {r['policies']} policies: "
              f"{r['mb']:.0f} MB")
    if "namespaces" in result:
        n = result["namespaces"]
        print(f"\n{n['count']} namespaces, {n['pods']} pods, {n['policies']} policies: "
              f"enforced p50 {n['p50_ms']:.0f} ms, p99 {n['p99_ms']:.0f} ms; agent RSS "
              f"{n['mb']:.0f} MB")


if __name__ == "__main__":
    main()
