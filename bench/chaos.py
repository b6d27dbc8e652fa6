"""A bounded chaos run: a lab of 4 nodes (VXLAN, a 3-member etcd) whose pods churn while every
ordered pod pair is probed each second and faults are injected at random, one at a time:

  agent-kill        a node's agent SIGKILLed, then started again
  etcd-member-kill  an etcd member SIGKILLed, started again 3 s later
  link-down         a node's underlay link down for 2 s
  route-delete      a node's route to a peer's pod subnet deleted by hand
  fdb-delete        a node's FDB entry towards a peer deleted
  neigh-delete      a node's neighbour entry for a peer's VTEP deleted
  pod-vanish        a pod's namespace deleted without a CNI DEL (the runtime DELs it 3 s later,
                    as kubelet does for a sandbox that died)

At the end: no leaked address, veth, lease or pod record; `podnet verify` passes; each agent's
RSS grew by at most 5 MB after a minute's warm-up; probe failures only inside link-down
windows. Each fault's recovery time (p50 and max per kind) is reported. Exit 1 when a promise
is broken.

    .venv/bin/python bench/chaos.py [--minutes 10] [--seed N] [--json bench/out/chaos.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from podnet.datastore.etcd import EtcdStore
from podnet.lab.lab import Lab, down, ns_path, status
from podnet.lab.topology import PodSpec, Topology
from podnet.netlink import links, netns
from podnet.verify import probes
from podnet.verify.check import endpoints_of, run

KINDS = ("agent-kill", "etcd-member-kill", "link-down", "route-delete", "fdb-delete",
         "neigh-delete", "pod-vanish")
RSS_LIMIT_KB = 5 * 1024
LINK_DOWN_S = 2.0
RECOVERY_LIMIT_S = 30.0
WARMUP_S = 60.0


@dataclass
class Fault:
    kind: str
    where: str
    start: float
    check: Callable[[], bool]  # recovered?
    since: float = 0.0  # recovery counts from here (a link back up, a member restarted)
    later: Callable[[], None] | None = None  # the second half of the fault (up, restart)
    later_at: float = 0.0
    recovered: float | None = None

    def to_json(self, t0: float) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "at_s": round(self.start - t0, 1),
                "recovery_s": None if self.recovered is None
                else round(self.recovered - (self.since or self.start), 2)}


@dataclass
class Prober:
    """Every ordered pair of the pods in `pods`, pinged once a second."""

    pods: dict[str, PodSpec]
    lab: Lab
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    failures: list[tuple[float, str, str, str, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        lab = self.lab.topo.name
        with ThreadPoolExecutor(max_workers=32) as pool:
            while not self.stop.is_set():
                start = time.monotonic()
                with self.lock:
                    pods = list(self.pods.values())
                pairs = [(a, b) for a in pods for b in pods if a.name != b.name]
                done = list(pool.map(lambda ab: self.probe(lab, *ab), pairs))
                with self.lock:
                    for (a, b), (good, at) in zip(pairs, done, strict=True):
                        # Neither churned meanwhile: by identity, as a pod replaced on the
                        # same node takes its predecessor's name.
                        if self.pods.get(a.name) is a and self.pods.get(b.name) is b:
                            self.sent += 1
                            if not good:
                                self.failures.append((at, a.name, b.name, a.node, b.node))
                self.stop.wait(max(0.0, 1.0 - (time.monotonic() - start)))

    @staticmethod
    def probe(lab: str, a: PodSpec, b: PodSpec) -> tuple[bool, float]:
        """Whether a reached b, and when that was known: a round lasts longer than a ping
        when pings time out, and a failure belongs to the moment of its ping."""
        good = probes.ping(ns_path(a.netns(lab)), b.ip, timeout=1.0)
        return good, time.monotonic()


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


class Chaos:
    def __init__(self, lab: Lab, seed: int) -> None:
        self.lab = lab
        self.rng = random.Random(seed)
        self.prober = Prober({p.name: p for p in lab.topo.pods}, lab)
        self.faults: list[Fault] = []
        self.store = lab.etcd_store()
        self.rss: dict[str, dict[str, int]] = {}
        self.rss_timeline: list[dict[str, int]] = []  # each sample: node -> kB
        self.seen: dict[int, float] = {}  # agent pid -> when first seen

    # -- helpers ------------------------------------------------------------------------------
    def in_node(self, node: str, fn: Callable[[Any], Any]) -> Any:
        ipr = netns.iproute_in(ns_path(self.lab.topo.node(node).netns(self.lab.topo.name)))
        try:
            return fn(ipr)
        finally:
            ipr.close()

    def etcd(self, fn: Callable[[EtcdStore], Any]) -> Any:
        with netns.entered(ns_path(self.lab.prefix + "cp")):
            return fn(self.store)

    def subnets(self) -> dict[str, str]:
        return {n["name"]: n["pod_subnet"] for n in status(self.lab)["nodes"]}

    def two_nodes(self) -> tuple[str, str, str, str]:
        """A node, a peer, the peer's subnet and node IP."""
        a, b = self.rng.sample([n.name for n in self.lab.topo.nodes], 2)
        peer = self.lab.topo.node(b)
        return a, b, self.subnets()[b], str(self.lab.topo.node_ip(peer))

    def sample_rss(self) -> None:
        """Each agent's RSS; its growth counts from its first sample after WARMUP_S of its
        life (its heap and the interpreter's pools reach their working size in its first
        minute of pods and faults): what grows after that would be a leak."""
        now = time.monotonic()
        self.rss_timeline.append({n.name: rss_kb(n.agent_pid) for n in self.lab.topo.nodes})
        for node in self.lab.topo.nodes:
            pid = node.agent_pid
            born = self.seen.setdefault(pid, now)
            row = self.rss.get(node.name)
            if row is not None and row["pid"] == pid:
                row["end_kb"] = rss_kb(pid)
            elif now - born >= WARMUP_S:
                self.rss[node.name] = {"pid": pid, "start_kb": rss_kb(pid),
                                       "end_kb": rss_kb(pid)}

    # -- churn --------------------------------------------------------------------------------
    def churn(self) -> None:
        with self.prober.lock:
            gone = self.rng.choice(list(self.prober.pods.values()))
            del self.prober.pods[gone.name]
        self.lab.remove_pod(gone)
        pod = self.lab.add_pod(self.rng.choice([n.name for n in self.lab.topo.nodes]))
        with self.prober.lock:
            self.prober.pods[pod.name] = pod
        self.lab.save()

    # -- faults -------------------------------------------------------------------------------
    def inject(self, kind: str) -> Fault:
        now = time.monotonic()
        if kind == "agent-kill":
            name = self.rng.choice([n.name for n in self.lab.topo.nodes])
            node = self.lab.topo.node(name)
            os.kill(node.agent_pid, signal.SIGKILL)
            fault = Fault(kind, name, now, lambda: False)
            fault.later_at, fault.later = now + 1.0, lambda: self._restart(fault, name)
            return fault
        if kind == "etcd-member-kill":
            member = self.rng.choice(self.lab.topo.etcd_names)
            self.lab.kill_etcd_member(member)
            fault = Fault(kind, member, now, lambda: False)
            fault.later_at, fault.later = now + 3.0, lambda: self._start_member(fault, member)
            return fault
        if kind == "link-down":
            name = self.rng.choice([n.name for n in self.lab.topo.nodes])
            self.in_node(name, lambda ipr: ipr.link("set", index=links.index_of(ipr, "eth0"),
                                                    state="down"))
            fault = Fault(kind, name, now, lambda: False)
            fault.later_at, fault.later = now + LINK_DOWN_S, lambda: self._link_up(fault, name)
            return fault
        if kind == "pod-vanish":
            with self.prober.lock:
                pod = self.rng.choice(list(self.prober.pods.values()))
                del self.prober.pods[pod.name]
            netns.remove(pod.netns(self.lab.topo.name))
            # Recovered when its address is published no more (a new sandbox may take the
            # name; the address is the old one's).
            fault = Fault(kind, pod.name, now, lambda: pod.ip not in self._published_ips())
            fault.later_at, fault.later = now + 3.0, lambda: self._kubelet_del(fault, pod)
            return fault
        a, b, subnet, peer_ip = self.two_nodes()
        if kind == "route-delete":
            self.in_node(a, lambda ipr: ipr.route("del", dst=subnet))
            return Fault(kind, f"{a}->{b}", now, lambda: self._has_route(a, subnet))
        gw = subnet.split("/")[0]
        if kind == "neigh-delete":
            self.in_node(a, lambda ipr: ipr.neigh("del", dst=gw, ifindex=self._vxlan(ipr)))
            return Fault(kind, f"{a}->{b}", now, lambda: self._has_neigh(a, gw))
        self.in_node(a, lambda ipr: [ipr.fdb("del", **self._fdb_key(f))
                                     for f in ipr.fdb("dump")
                                     if f.get_attr("NDA_DST") == peer_ip])
        return Fault(kind, f"{a}->{b}", now, lambda: self._has_fdb(a, peer_ip))

    def _restart(self, fault: Fault, name: str) -> None:
        self.lab.restart_agent(name)
        fault.check = lambda: _healthy(self.lab, name)

    def _start_member(self, fault: Fault, member: str) -> None:
        self.lab.start_etcd_member(member)
        fault.since = time.monotonic()
        url = self.lab.topo.etcd_member_url(member)

        def answers() -> bool:
            with netns.entered(ns_path(self.lab.prefix + member)):
                one = EtcdStore(url, timeout=1.0)
                try:
                    return one.healthy()
                finally:
                    one.close()
        fault.check = answers

    def _link_up(self, fault: Fault, name: str) -> None:
        self.in_node(name, lambda ipr: ipr.link("set", index=links.index_of(ipr, "eth0"),
                                                state="up"))
        fault.since = time.monotonic()

        def reaches() -> bool:
            """A pod of the node reaches every pod of the others (as they are now: pods
            churn meanwhile)."""
            with self.prober.lock:
                pods = list(self.prober.pods.values())
            mine = [p for p in pods if p.node == name][:1]
            return all(probes.ping(ns_path(a.netns(self.lab.topo.name)), b.ip, timeout=0.5,
                                   tries=1) for a in mine for b in pods if b.node != name)
        fault.check = reaches

    def _kubelet_del(self, fault: Fault, pod: PodSpec) -> None:
        """As kubelet after a sandbox died: DEL, then a new sandbox for the pod."""
        fault.since = time.monotonic()
        self.lab.remove_pod(pod)
        again = self.lab.add_pod(pod.node)
        with self.prober.lock:
            self.prober.pods[again.name] = again

    def _published_ips(self) -> set[str]:
        records = self.etcd(lambda s: s.pods())
        return {a.split("/")[0] for node in records.values() for raw in node.values()
                for a in json.loads(raw)["addresses"]}

    def _vxlan(self, ipr: Any) -> int:
        return next(link["index"] for link in ipr.get_links()
                    if links.kind_of(link) == "vxlan")

    @staticmethod
    def _fdb_key(entry: Any) -> dict[str, Any]:
        return {"ifindex": entry["ifindex"], "lladdr": entry.get_attr("NDA_LLADDR"),
                "dst": entry.get_attr("NDA_DST")}

    def _has_route(self, node: str, subnet: str) -> bool:
        dst, plen = subnet.split("/")
        return bool(self.in_node(node, lambda ipr: [
            r for r in ipr.get_routes(family=socket.AF_INET, table=254)
            if r.get_attr("RTA_DST") == dst and r["dst_len"] == int(plen)]))

    def _has_neigh(self, node: str, ip: str) -> bool:
        return bool(self.in_node(node, lambda ipr: [
            n for n in ipr.get_neighbours(family=socket.AF_INET)
            if n.get_attr("NDA_DST") == ip and n["state"] & 0x80]))

    def _has_fdb(self, node: str, peer_ip: str) -> bool:
        return bool(self.in_node(node, lambda ipr: [
            f for f in ipr.fdb("dump") if f.get_attr("NDA_DST") == peer_ip]))

    # -- the run ------------------------------------------------------------------------------
    def settle(self, limit: float = 30.0) -> None:
        """Until every pod pair answers (at most `limit` s): a lab is up once each agent
        serves, and the agents learn of each other's leases by events that may come after
        that; the run's promises start from a converged cluster."""
        lab = self.lab.topo.name
        pods = list(self.prober.pods.values())
        pending = [(a, b) for a in pods for b in pods if a.name != b.name]
        deadline = time.monotonic() + limit
        with ThreadPoolExecutor(max_workers=32) as pool:
            while pending and time.monotonic() < deadline:
                good = list(pool.map(lambda ab: Prober.probe(lab, *ab)[0], pending))
                pending = [ab for ab, ok in zip(pending, good, strict=True) if not ok]

    def run(self, minutes: float) -> dict[str, Any]:
        t0 = time.monotonic()
        self.sample_rss()
        thread = threading.Thread(target=self.prober.run, daemon=True)
        thread.start()
        end = t0 + minutes * 60
        next_churn, next_fault, next_rss = t0 + 2, t0 + 5, t0 + 15
        kinds = list(KINDS)
        current: Fault | None = None
        while time.monotonic() < end or current is not None:
            now = time.monotonic()
            if current is not None:
                if current.later is not None and now >= current.later_at:
                    later, current.later = current.later, None
                    later()
                elif current.later is None and current.check():
                    current.recovered = time.monotonic()
                    self.faults.append(current)
                    current = None
                    next_fault = time.monotonic() + self.rng.uniform(3, 6)
                elif now - current.start > RECOVERY_LIMIT_S + LINK_DOWN_S:
                    self.faults.append(current)  # never recovered: reported, and fails
                    current = None
            elif now < end and now >= next_fault:
                if not kinds:
                    kinds = list(KINDS)
                kind = kinds.pop(self.rng.randrange(len(kinds)))  # every kind in each round
                current = self.inject(kind)
            if now >= next_rss and current is None:
                self.sample_rss()
                next_rss = now + 15
            if now < end and now >= next_churn and (current is None
                                                     or current.kind != "pod-vanish"):
                self.churn()
                next_churn = time.monotonic() + 3
            time.sleep(0.1)
        time.sleep(3)  # the last churned pods published, the prober's last round
        self.prober.stop.set()
        thread.join()
        self.sample_rss()
        return self.report(t0, minutes)

    def report(self, t0: float, minutes: float) -> dict[str, Any]:
        windows = [(f.where, f.start, (f.recovered or f.start) + 1.0) for f in self.faults
                   if f.kind == "link-down"]
        outside = [fl for fl in self.prober.failures
                   if not any((node in (fl[3], fl[4])) and start <= fl[0] <= stop
                              for node, start, stop in windows)]
        by_kind: dict[str, dict[str, Any]] = {}
        for kind in KINDS:
            times = [f.recovered - (f.since or f.start) for f in self.faults
                     if f.kind == kind and f.recovered is not None]
            count = sum(1 for f in self.faults if f.kind == kind)
            by_kind[kind] = {"count": count, "recovered": len(times),
                             "p50_s": round(statistics.median(times), 2) if times else None,
                             "max_s": round(max(times), 2) if times else None}
        leaks = self.leaks()
        st = status(self.lab)
        mtu = self.lab.conflist(self.lab.topo.nodes[0])["plugins"][0].get("mtu")
        verified = run(endpoints_of(st), st, mtu)
        rss = {n: r | {"growth_kb": r["end_kb"] - r["start_kb"]} for n, r in self.rss.items()}
        probed = {"sent": self.prober.sent, "failed": len(self.prober.failures),
                  "failed_outside_link_down": len(outside),
                  "first_outside": [{"at_s": round(at - t0, 1), "from": a, "to": b}
                                    for at, a, b, _, _ in outside[:20]]}
        broken = []
        if outside:
            broken.append(f"{len(outside)} probe failures outside link-down windows, first: "
                          f"{outside[0][1]}->{outside[0][2]} at {outside[0][0] - t0:.1f} s")
        if any(f.recovered is None for f in self.faults):
            broken.append("faults that never recovered: " + ", ".join(
                f"{f.kind} {f.where}" for f in self.faults if f.recovered is None))
        if any(leaks.values()):
            broken.append(f"leaks: {leaks}")
        if not verified.ok:
            broken.append("podnet verify failed")
        if not rss:
            broken.append("no agent lived long enough for its RSS to be measured")
        if any(r["growth_kb"] > RSS_LIMIT_KB for r in rss.values()):
            broken.append(f"agent RSS grew by more than {RSS_LIMIT_KB} kB: {rss}")
        return {"minutes": minutes, "nodes": len(self.lab.topo.nodes),
                "pods": len(self.lab.topo.pods), "faults": [f.to_json(t0) for f in self.faults],
                "by_kind": by_kind, "probes": probed,
                "leaks": leaks, "verify_ok": verified.ok, "agent_rss": rss,
                "agent_rss_timeline_kb": self.rss_timeline, "broken": broken}

    def leaks(self) -> dict[str, list[str]]:
        """What is left that no current pod or node accounts for."""
        out: dict[str, list[str]] = {"addresses": [], "veths": [], "leases": [],
                                     "pod_records": []}
        for node in self.lab.topo.nodes:
            pods = {p.ip for p in self.lab.topo.pods if p.node == node.name}
            ipam = os.path.join(self.lab.node_dir(node), "ipam", "podnet")
            held = {f for f in os.listdir(ipam) if f[:1].isdigit()}
            out["addresses"] += [f"{node.name}: {ip}" for ip in sorted(held - pods)]
            veths = self.in_node(node.name, lambda ipr: [
                link.get_attr("IFLA_IFNAME") for link in ipr.get_links()
                if links.kind_of(link) == "veth" and link.get_attr("IFLA_IFNAME") != "eth0"])
            count = sum(1 for p in self.lab.topo.pods if p.node == node.name)
            if len(veths) != count:
                out["veths"].append(f"{node.name}: {len(veths)} veths for {count} pods")
        leases, _ = self.etcd(lambda s: s.snapshot(s.get_config()))
        names = sorted(lease.node for lease in leases.values())
        if names != sorted(n.name for n in self.lab.topo.nodes):
            out["leases"].append(f"leases of {names}")
        records = self.etcd(lambda s: s.pods())
        published = sorted(json.loads(raw)["name"] for node in records.values()
                           for raw in node.values())
        want = sorted(p.name for p in self.lab.topo.pods)
        if published != want:
            out["pod_records"].append(f"published {sorted(set(published) ^ set(want))} "
                                      "differ from the pods")
        return out


def _healthy(lab: Lab, node: str) -> bool:
    import urllib.error
    import urllib.request

    with netns.entered(ns_path(lab.topo.node(node).netns(lab.topo.name))):
        try:
            return bool(urllib.request.urlopen("http://127.0.0.1:9153/healthz",
                                               timeout=1).status == 200)
        except (urllib.error.URLError, OSError):
            return False


def markdown(report: dict[str, Any]) -> str:
    lines = [f"{report['minutes']} minutes, {report['nodes']} nodes, pods churning (one "
             f"replaced every 3 s), every pod pair probed each second: "
             f"{report['probes']['sent']} probes, {report['probes']['failed']} failed, "
             f"{report['probes']['failed_outside_link_down']} outside link-down windows",
             "", "| fault | injected | recovery p50 | recovery max |", "|---|---|---|---|"]
    for kind, row in report["by_kind"].items():
        p50 = "-" if row["p50_s"] is None else f"{row['p50_s']} s"
        top = "-" if row["max_s"] is None else f"{row['max_s']} s"
        lines.append(f"| {kind} | {row['count']} | {p50} | {top} |")
    growth = max((r["growth_kb"] for r in report["agent_rss"].values()), default=0)
    lines += ["", f"leaks: {sum(len(v) for v in report['leaks'].values())}; podnet verify: "
              f"{'passed' if report['verify_ok'] else 'FAILED'}; largest agent RSS growth "
              f"after its first minute: {growth} kB", ""]
    lines += [f"BROKEN: {b}" for b in report["broken"]] or ["every promise kept"]
    if report["broken"]:  # when each fault came and went, to set the broken promise against
        lines += ["", "faults (at s, recovered after s): " + ", ".join(
            f"{f['kind']} {f['where']} {f['at_s']} {f['recovery_s']}" for f in report["faults"])]
        lines += [f"outside link-down: {o['at_s']} s {o['from']} -> {o['to']}"
                  for o in report["probes"]["first_outside"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "out",
                                                       "chaos.json"))
    args = parser.parse_args()
    topo = Topology.make(f"chaos{os.getpid() % 10000}", "vxlan", 4, 2, "switch")
    topo.reconcile_interval = 1.0
    topo.etcd_members = 3
    lab = Lab(topo, lambda line: print(line, file=sys.stderr))
    try:
        lab.up()
        chaos = Chaos(lab, args.seed)
        chaos.settle()
        report = chaos.run(args.minutes) | {"seed": args.seed}
        chaos.store.close()
    finally:
        with contextlib.suppress(Exception):
            down(topo.name)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=2)
    print(markdown(report))
    return 1 if report["broken"] else 0


if __name__ == "__main__":
    sys.exit(main())
