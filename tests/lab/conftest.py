"""Labs for tests: uniquely named, always taken down (also when a test fails)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from podnet.fastpath import podmap
from podnet.lab.lab import Lab, down, ns_path, status
from podnet.lab.topology import PodSpec, Topology, netns_prefix
from podnet.netlink import netns
from podnet.netlink.fastlink import Rtnl
from podnet.verify.check import Report
from podnet.verify.cli import lab_report

MakeLab = Callable[..., Lab]
PODNET = [sys.executable, "-m", "podnet"]


@pytest.fixture
def make_lab() -> Iterator[MakeLab]:
    made: list[str] = []

    def make(backend: str = "vxlan", nodes: int = 3, pods: int = 2, underlay: str = "switch",
             reconcile: float = 2.0, gateway_mode: str = "bgp", fast_path: bool = True,
             agent_image: str = "", etcd_members: int = 1, etcd_auth: bool = False,
             ip_family: str = "ipv4", underlay_family: str = "ipv4",
             receive_steering: bool = False) -> Lab:
        name = f"t{uuid.uuid4().hex[:6]}"
        made.append(name)
        topo = Topology.make(name, backend, nodes, pods, underlay)
        topo.reconcile_interval = reconcile
        topo.gateway_mode = gateway_mode
        topo.fast_path = fast_path
        topo.agent_image = agent_image
        topo.etcd_tls = bool(agent_image)
        topo.etcd_members = etcd_members
        topo.etcd_auth = etcd_auth
        topo.ip_family = ip_family
        topo.underlay_family = underlay_family
        topo.receive_steering = receive_steering
        lab = Lab(topo)
        lab.up()
        return lab

    yield make
    for name in made:
        down(name)
        assert netns.listed(netns_prefix(name)) == []


def verify(lab: Lab, family: int = 4) -> Report:
    """`podnet verify`'s checks of one family, held to what the lab's policies expect."""
    return lab_report(lab, family)[0]


def failures(report: Report) -> list[str]:
    out = [f"{p.src}->{p.dst}: {p.why}" for p in report.pairs if not p.ok]
    out += [f"MTU {m['src']}->{m['dst']}" for m in report.mtu if not m["ok"]]
    return out


@contextlib.contextmanager
def fast_path_at(lab: Lab, node: str) -> Iterator[tuple[Rtnl, int, podmap.Attached | None]]:
    """The node's netlink socket, its uplink's index, and the fast path attached there."""
    rtnl = netns.rtnl_in(lab.target_netns(node))
    try:
        uplink = rtnl.get_link("eth0")
        assert uplink is not None
        with podmap.attached(rtnl, uplink.index) as fast:
            yield rtnl, uplink.index, fast
    finally:
        rtnl.close()


def verify_etcd(lab: Lab, *extra: str) -> tuple[int, dict[str, Any] | None, str]:
    """`podnet verify --etcd URL --json` from the etcd member's namespace, as an operator's
    machine that reaches etcd (and nothing else of the cluster) would run it."""
    st = status(lab)
    proc = subprocess.run(["nsenter", f"--net={ns_path(st['etcd']['netns'])}", *PODNET,
                           "verify", *lab.etcd_args(), "--json", *extra],
                          capture_output=True, text=True, timeout=120, check=False)
    report = json.loads(proc.stdout) if proc.stdout.startswith("{") else None
    return proc.returncode, report, proc.stderr


def published(lab: Lab) -> set[str]:
    """The pods the agents published in etcd, read from etcd's own namespace."""
    st = status(lab)
    with netns.entered(ns_path(st["etcd"]["netns"])):
        store = lab.etcd_store()
        try:
            return {json.loads(raw)["name"] for records in store.pods().values()
                    for raw in records.values()}
        finally:
            store.close()


def wait_published(lab: Lab) -> None:
    want = {p.k8s_name for p in lab.topo.pods}  # as kubelet named them to the plugin
    deadline = time.monotonic() + 10
    while published(lab) != want:
        assert time.monotonic() < deadline, f"published {published(lab)}, not {want}"
        time.sleep(0.2)


SEND = """
import socket, sys
server = socket.create_server(("0.0.0.0", 7500))
print("ready", flush=True)
conn, _ = server.accept()
conn.sendall(b"x" * int(sys.argv[1]))
conn.close()
"""
RECEIVE = """
import socket, sys
s = socket.create_connection((sys.argv[1], 7500), timeout=10)
n = 0
while data := s.recv(1 << 16):
    n += len(data)
print(n)
"""


def transfer(lab: Lab, sender: PodSpec, receiver: PodSpec, size: int) -> str:
    """`receiver` connects to `sender`, which sends `size` bytes and closes: what the
    receiver read before the end of the stream (or the error that ended it)."""
    def run(pod: PodSpec, script: str, *args: str) -> list[str]:
        return ["nsenter", f"--net={ns_path(pod.netns(lab.topo.name))}", sys.executable, "-c",
                script, *args]

    with subprocess.Popen(run(sender, SEND, str(size)), stdout=subprocess.PIPE,
                          text=True) as server:
        try:
            assert server.stdout is not None and server.stdout.readline() == "ready\n"
            out = subprocess.run(run(receiver, RECEIVE, sender.ip), capture_output=True,
                                 text=True, timeout=60)
            return out.stdout.strip() or out.stderr.strip().splitlines()[-1]
        finally:
            server.kill()
