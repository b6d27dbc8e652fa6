"""Nothing a user types harms another lab, another node or the host: refusals come before any
side effect, `--leave` removes everything the agent made, one agent per host, a config change
is never run on silently, and two labs whose names share a prefix never touch each other."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from podnet.agent.options import AgentOptions
from podnet.cni.invoke import Runtime
from podnet.errors import UserError
from podnet.install import install_cni
from podnet.lab.lab import Lab, down, ns_path, status
from podnet.lab.topology import Topology
from podnet.netlink import netns
from tests.conftest import healthz, links_in, ns_run
from tests.lab.conftest import failures, verify

PODNET = [sys.executable, "-m", "podnet"]
FORM = re.compile(r"^podnet [a-z -]+: .+ \(.+\)$", re.M)


@dataclass
class Solo:
    """One node on the file datastore, in a namespace of its own."""

    ns: str
    tmp: Path

    @property
    def store(self) -> str:
        return f"file://{self.tmp}/store"

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net={self.ns}", *PODNET, *argv],
                              capture_output=True, text=True, timeout=60, check=False)

    def agent_args(self, name: str = "solo", *extra: str) -> list[str]:
        d = self.tmp / name
        return ["agent", "--etcd", self.store, "--node-name", name, "--node-ip", "192.168.60.1",
                "--cni-conf-dir", f"{d}/net.d", "--cni-socket", f"{d}/cni.sock",
                "--state-dir", f"{d}/state", "--ipam-data-dir", f"{d}/ipam", *extra]

    def start(self, name: str = "solo", *extra: str) -> subprocess.Popen[str]:
        log = open(self.tmp / f"{name}.log", "a")  # noqa: SIM115  (the agent's, for its life)
        return subprocess.Popen(["nsenter", f"--net={self.ns}", *PODNET,
                                 *self.agent_args(name, *extra)], stdout=log, stderr=log,
                                text=True)

    def wait_ready(self, proc: subprocess.Popen[str], name: str = "solo",
                   log: str | None = None) -> None:
        d = self.tmp / name
        deadline = time.monotonic() + 30
        while not ((d / "net.d" / "10-podnet.conflist").exists() and (d / "cni.sock").exists()):
            assert proc.poll() is None, self.log(log or name)
            assert time.monotonic() < deadline, self.log(log or name)
            time.sleep(0.05)

    def log(self, name: str = "solo") -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def leases(self) -> dict[str, str]:
        path = self.tmp / "store" / "leases.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def health(self) -> tuple[int, str]:
        return healthz(self.ns)

    def nft_tables(self) -> str:
        return ns_run(self.ns, "nft", "list", "tables").stdout


def stop(proc: subprocess.Popen[str]) -> float:
    """SIGTERM; how long the agent took to exit."""
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    return time.monotonic() - start


@pytest.fixture
def solo(make_ns: Callable[[str], str], tmp_path: Path) -> Iterator[Solo]:
    ns = make_ns("solo")
    for cmd in (["link", "set", "lo", "up"],
                ["link", "add", "e0", "type", "veth", "peer", "name", "e1"],
                ["link", "set", "e0", "up"], ["link", "set", "e1", "up"],
                ["addr", "add", "192.168.60.1/24", "dev", "e0"]):
        subprocess.run(["nsenter", f"--net={ns}", "ip", *cmd], check=True)
    node = Solo(ns, tmp_path)
    init = node.run("cluster", "init", "--etcd", node.store, "--cidr", "10.245.0.0/16",
                    "--backend", "host-gw")
    assert init.returncode == 0, init.stderr
    procs: list[subprocess.Popen[str]] = []
    real_start = node.start

    def tracked(name: str = "solo", *extra: str) -> subprocess.Popen[str]:
        proc = real_start(name, *extra)
        procs.append(proc)
        return proc

    node.start = tracked  # type: ignore[method-assign]
    yield node
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def nothing_made(node: Solo, name: str) -> None:
    """No lease, conflist, bridge, nftables table or fast path of the refused agent."""
    assert all(json.loads(v)["node"] != name for v in node.leases().values())
    assert not (node.tmp / name / "net.d" / "10-podnet.conflist").exists()


def test_one_agent_per_host(solo: Solo) -> None:
    first = solo.start()
    solo.wait_ready(first)
    before = (solo.leases(), sorted(links_in(solo.ns)), solo.nft_tables())
    second = solo.run(*solo.agent_args("other", "--metrics", "127.0.0.1:0"))
    assert second.returncode == 1
    assert (f"another podnet agent runs on this host: node 'solo', pid {first.pid} "
            "(stop it first; one agent serves a host)") in second.stderr
    assert "Traceback" not in second.stderr
    nothing_made(solo, "other")
    assert (solo.leases(), sorted(links_in(solo.ns)), solo.nft_tables()) == before
    assert first.poll() is None and solo.health() == (200, "ok\n")


def test_leave_refused_while_running_then_removes_everything(solo: Solo) -> None:
    agent = solo.start()
    solo.wait_ready(agent)
    refused = solo.run(*solo.agent_args(), "--leave")
    assert refused.returncode == 1 and FORM.search(refused.stderr), refused.stderr
    assert f"an agent runs on this host (node 'solo', pid {agent.pid})" in refused.stderr
    assert (solo.tmp / "solo" / "net.d" / "10-podnet.conflist").exists()
    # A pod came and went: its bridge address, antispoof and masquerade tables stay behind.
    conflist = json.loads((solo.tmp / "solo" / "net.d" / "10-podnet.conflist").read_text())
    bin_dir = solo.tmp / "bin"
    install_cni(str(bin_dir))
    rt = Runtime(path=[str(bin_dir), "/usr/lib/cni"], node_netns=solo.ns)
    pod = netns.create(f"pnt-leave-{uuid.uuid4().hex[:6]}")
    try:
        rt.add_list(conflist, "leave1", pod)
        rt.del_list(conflist, "leave1", pod)
    finally:
        netns.remove(os.path.basename(pod))
    assert "kube-bridge" in links_in(solo.ns) and "podnet" in solo.nft_tables()
    assert stop(agent) < 10 and agent.returncode == 0
    left = solo.run(*solo.agent_args(), "--leave")
    assert left.returncode == 0, left.stderr
    assert solo.leases() == {}
    d = solo.tmp / "solo"
    assert not (d / "net.d" / "10-podnet.conflist").exists() and not (d / "cni.sock").exists()
    assert not (d / "state" / "solo.json").exists()
    assert sorted(links_in(solo.ns)) == ["e0", "e1", "lo"]
    assert solo.nft_tables().strip() == ""
    assert "proto 88" not in ns_run(solo.ns, "ip", "route").stdout
    assert ns_run(solo.ns, "tc", "filter", "show", "dev", "e0", "ingress").stdout.strip() == ""
    # And back: a new start wires pods as before.
    again = solo.start()
    solo.wait_ready(again)
    assert solo.health() == (200, "ok\n")


def test_sigterm_ends_the_agent_promptly_and_keeps_the_data_plane(solo: Solo) -> None:
    agent = solo.start()
    solo.wait_ready(agent)
    routes = ns_run(solo.ns, "ip", "addr", "show", "kube-bridge").stdout
    took = stop(agent)
    print(f"SIGTERM to exit: {took * 1000:.0f} ms")
    assert agent.returncode == 0 and took < 5  # it waited 10 s for etcd's watch stream
    assert ns_run(solo.ns, "ip", "addr", "show", "kube-bridge").stdout == routes
    assert "shutting down; the data plane stays as it is" in solo.log()


def test_stale_bridge_address_replaced_and_health_says_why(solo: Solo) -> None:
    # A node back with another subnet: its bridge still holds the old lease's gateway.
    ns_run(solo.ns, "ip", "link", "add", "kube-bridge", "type", "bridge")
    ns_run(solo.ns, "ip", "addr", "add", "10.245.200.1/24", "dev", "kube-bridge")
    agent = solo.start()
    solo.wait_ready(agent)
    conflist = json.loads((solo.tmp / "solo" / "net.d" / "10-podnet.conflist").read_text())
    subnet = conflist["plugins"][0]["ipam"]["subnet"]
    gateway = subnet.replace(".0/24", ".1/24")
    addrs = ns_run(solo.ns, "ip", "-4", "-o", "addr", "show", "kube-bridge").stdout
    assert gateway in addrs and "10.245.200.1" not in addrs
    assert solo.health() == (200, "ok\n")
    bin_dir = solo.tmp / "bin"
    install_cni(str(bin_dir))
    pod = netns.create(f"pnt-readdr-{uuid.uuid4().hex[:6]}")
    try:
        result = Runtime(path=[str(bin_dir), "/usr/lib/cni"], node_netns=solo.ns).add_list(
            conflist, "readdr1", pod)
        assert result["ips"][0]["address"].startswith(subnet.rsplit(".", 2)[0])
    finally:
        netns.remove(os.path.basename(pod))
    # The address gone behind the agent's back: /healthz fails and says why.
    ns_run(solo.ns, "ip", "addr", "del", gateway, "dev", "kube-bridge")
    code, body = solo.health()
    assert code == 503 and f"the pod bridge kube-bridge lacks the gateway address {gateway}" \
        in body


def test_metrics_port_in_use_refused_before_the_lease(solo: Solo) -> None:
    with netns.entered(solo.ns):
        busy = socket.socket()
    with busy:
        busy.bind(("127.0.0.1", 9153))
        busy.listen()
        proc = solo.run(*solo.agent_args())
    assert proc.returncode == 1
    assert ("cannot serve metrics on 127.0.0.1:9153: Address already in use (free the port"
            in proc.stderr), proc.stderr
    nothing_made(solo, "solo")
    assert "kube-bridge" not in links_in(solo.ns) and solo.nft_tables().strip() == ""


def test_node_ip_inside_the_pod_network_refused(solo: Solo) -> None:
    ns_run(solo.ns, "ip", "addr", "add", "10.245.9.9/32", "dev", "lo")
    args = solo.agent_args()
    args[args.index("--node-ip") + 1] = "10.245.9.9"
    proc = solo.run(*args)
    assert proc.returncode == 1 and FORM.search(proc.stderr), proc.stderr
    assert "node IP 10.245.9.9 lies inside the pod network 10.245.0.0/16" in proc.stderr
    nothing_made(solo, "solo")
    assert "kube-bridge" not in links_in(solo.ns) and solo.nft_tables().strip() == ""


def test_a_newer_datastore_format_is_refused(solo: Solo) -> None:
    path = solo.tmp / "store" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": 3}))
    proc = solo.run(*solo.agent_args())
    assert proc.returncode == 1 and FORM.search(proc.stderr), proc.stderr
    assert ("the datastore was written in format 3 by a newer podnet; this one knows format 2 "
            "(upgrade this node's podnet to the cluster's)") in proc.stderr
    nothing_made(solo, "solo")
    assert "kube-bridge" not in links_in(solo.ns) and solo.nft_tables().strip() == ""


def test_config_change_is_never_run_on_silently(solo: Solo) -> None:
    agent = solo.start("solo", "--reconcile-interval", "0.2")
    solo.wait_ready(agent)
    shown = json.loads(solo.run("cluster", "show", "--json", "--etcd", solo.store).stdout)
    assert shown["config"]["backend"] == {"type": "host-gw"}
    assert [lease["node"] for lease in shown["leases"]] == ["solo"]
    init = solo.run("cluster", "init", "--etcd", solo.store, "--cidr", "10.245.0.0/16",
                    "--backend", "vxlan")
    assert init.returncode == 0, init.stderr
    assert agent.wait(timeout=20) == 3
    assert "network config changed (backend host-gw -> vxlan): exiting (status 3)" in solo.log()


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(node=st.one_of(st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True),
                      st.sampled_from(["A", "a/b", "../x", "-n", "n" * 254, "n" * 253])),
       ttl=st.sampled_from([-1, 0, 4, 5, 60, 86401, 10**12]),
       interval=st.sampled_from(["-1", "0", "nan", "inf", "0.05", "0.5", "10", "1e9"]),
       metrics=st.sampled_from(["127.0.0.1:0", "127.0.0.1:9155", "banana", "127.0.0.1:65536",
                                "[::1]:9156", ":9157", "1.2.3.4.5:80"]))
@example(node="node-a", ttl=60, interval="0.5", metrics="127.0.0.1:9155")
@example(node="n" * 253, ttl=5, interval="10", metrics="[::1]:9156")
def test_random_agent_options_work_or_change_nothing(solo: Solo, node: str, ttl: int,
                                                     interval: str, metrics: str) -> None:
    # Paths of their own per example; the options under test vary.
    d = Path(tempfile.mkdtemp(prefix="ex", dir=solo.tmp))
    opts = AgentOptions(node_name=node, ttl=ttl, metrics_addr=metrics,
                        reconcile_interval=float(interval), node_ip="192.168.60.1",
                        cni_conf_dir=f"{d}/net.d", cni_socket=f"{d}/cni.sock",
                        state_dir=f"{d}/state", ipam_data_dir=f"{d}/ipam")
    argv = ["agent", "--etcd", solo.store, "--node-name", node, "--node-ip", "192.168.60.1",
            "--cni-conf-dir", opts.cni_conf_dir, "--cni-socket", opts.cni_socket,
            "--state-dir", opts.state_dir, "--ipam-data-dir", f"{d}/ipam", "--ttl", str(ttl),
            "--reconcile-interval", interval, "--metrics", metrics]
    try:
        opts.check()
        accepted = True
    except UserError:
        accepted = False
    def state() -> tuple[object, ...]:
        files = sorted(str(p) for p in solo.tmp.rglob("*") if p.suffix != ".log")
        return solo.leases(), sorted(links_in(solo.ns)), solo.nft_tables(), files

    before = state()
    with open(solo.tmp / "example.log", "w") as log:
        proc = subprocess.Popen(["nsenter", f"--net={solo.ns}", *PODNET, *argv], stdout=log,
                                stderr=log, text=True)
        if not accepted:
            proc.wait(timeout=30)
            err = (solo.tmp / "example.log").read_text()
            assert proc.returncode in (1, 2) and FORM.search(err), err
            assert "Traceback" not in err and state() == before
            return
        try:
            solo.wait_ready(proc, d.name, log="example")
            assert any(json.loads(v)["node"] == node for v in solo.leases().values())
        finally:
            stop(proc)
    assert proc.returncode == 0


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODNET, *argv], capture_output=True, text=True, timeout=180,
                          check=False)


def test_labs_whose_names_share_a_prefix_never_touch_each_other(tmp_path: Path) -> None:
    short = f"s{uuid.uuid4().hex[:5]}"
    long = f"{short}-z"  # its namespaces start with the short one's prefix
    try:
        for name in (short, long):
            built = _cli("lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "1")
            assert built.returncode == 0, built.stderr
        other = Lab.load(long)
        before = (sorted(other.topo.netns_made), [n.agent_pid for n in other.topo.nodes],
                  other.topo.etcd_pid)

        again = _cli("lab", "up", "--name", short)
        assert again.returncode == 1 and f"lab {short!r} exists already" in again.stderr
        again = _cli("lab", "up", "--name", long)
        assert again.returncode == 1 and FORM.search(again.stderr)
        for argv in (["status", "--json"], ["add-node", "--pods", "1"], ["add-pod", "node1"],
                     ["restart-agent", "node1"], ["exec", "node1", "--", "true"],
                     ["diagram", "-o", str(tmp_path / "d.svg")]):
            done = _cli("lab", *argv[:1], "--name", short, *argv[1:])
            assert done.returncode == 0, (argv, done.stderr)
        assert _cli("verify", "--lab", short).returncode == 0
        etcd = json.loads(_cli("lab", "status", "--name", short, "--json").stdout)["etcd"]
        assert (etcd["url"], etcd["netns"]) == (Lab.load(short).topo.etcd_url, f"pnl-{short}-cp")
        assert [m["name"] for m in etcd["members"]] == ["cp"]
        for argv, message in ((["exec", "nosuch", "--", "true"], "no 'nosuch' in lab"),
                              (["exec", "node1"], "no command to run"),
                              (["add-pod", "node9"], "no node 'node9'"),
                              (["diagram", "-o", "/nonexistent/x.png"], "does not exist"),
                              (["diagram", "-o", str(tmp_path / "x.gif")], ".png or .svg")):
            refused = _cli("lab", argv[0], "--name", short, *argv[1:])
            assert refused.returncode == 1 and message in refused.stderr, refused.stderr
            assert FORM.search(refused.stderr) and "Traceback" not in refused.stderr
        # A namespace removed behind the lab's back: verify names it instead of failing.
        netns.remove(Lab.load(short).topo.pods[0].netns(short))
        damaged = _cli("verify", "--lab", short)
        assert damaged.returncode == 1 and "is damaged" in damaged.stderr, damaged.stderr
        for node in ("node3", "node2", "node1"):
            assert _cli("lab", "remove-node", "--name", short, node).returncode == 0
        empty = _cli("verify", "--lab", short)
        assert empty.returncode == 1 and "has no nodes to verify" in empty.stderr
        assert _cli("lab", "down", "--name", short).returncode == 0

        other = Lab.load(long)
        assert (sorted(other.topo.netns_made), [n.agent_pid for n in other.topo.nodes],
                other.topo.etcd_pid) == before
        assert all(os.path.exists(ns_path(ns)) for ns in other.topo.netns_made)
        assert all(os.path.exists(f"/proc/{n.agent_pid}") for n in other.topo.nodes)
        report = verify(other)
        assert report.ok, failures(report)
        assert len(status(other)["pods"]) == 2
    finally:
        down(short)
        down(long)


def test_failing_up_leaves_the_running_lab_alone() -> None:
    name = f"t{uuid.uuid4().hex[:6]}"
    lab = Lab(Topology.make(name, "host-gw", 2, 1))
    try:
        lab.up()
        refused = _cli("lab", "up", "--name", name, "--nodes", "1")
        assert refused.returncode == 1 and "exists already" in refused.stderr
        report = verify(Lab.load(name))
        assert report.ok, failures(report)
    finally:
        down(name)
