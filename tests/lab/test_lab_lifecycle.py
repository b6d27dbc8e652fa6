"""The lab's own promises: down after a crash finds leftovers by name and is idempotent; the
diagram is drawn from the live kernel; more nodes than subnets is a clear error; vxlan's
directRouting routes on-link peers directly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from podnet.errors import UserError
from podnet.lab.lab import Lab, down, lab_dir, status
from podnet.lab.topology import Topology, netns_prefix
from podnet.netlink import netns
from podnet.verify.check import endpoints_of
from podnet.verify.diagnose import explain, lab_lacks
from tests.lab.conftest import MakeLab, failures, verify
from tests.lab.test_backend_policy import _reinit
from tests.lab.test_fastpath import tunnels
from tests.lab.test_lab_ops import sh


def test_down_after_a_crash_is_complete_and_idempotent() -> None:
    """`lab up` killed mid-build: what it made is in its state, and `down` removes exactly
    that (agents and etcd, which outlive it, included)."""
    name = f"t{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen([sys.executable, "-m", "podnet", "lab", "up", "--name", name,
                             "--nodes", "2", "--pods-per-node", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        # Crash it once a node's agent runs (etcd and an agent are then running).
        deadline = time.monotonic() + 60
        while not _agent_running(name):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        # The whole command (with pyroute2's helper that makes a namespace), as Ctrl-C or an
        # OOM kill would end it; the agents and etcd run in sessions of their own.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        lab = Lab.load(name)
        pids = [n.agent_pid for n in lab.topo.nodes if n.agent_pid] + [lab.topo.etcd_pid]
        made = list(lab.topo.netns_made)
        # Recorded before it is made: whatever exists is on record (the last may not exist).
        existing = [ns for ns in netns.listed() if ns.startswith(netns_prefix(name))]
        assert existing and set(existing) <= set(made)
    finally:
        removed = down(name)
    assert sorted(removed) == sorted(existing)
    assert not any(n.startswith(netns_prefix(name)) for n in netns.listed())
    assert not os.path.exists(lab_dir(name))
    for pid in pids:
        assert _gone(pid)
    assert down(name) == []  # idempotent
    cli = subprocess.run([sys.executable, "-m", "podnet", "lab", "down", "--name", name],
                         capture_output=True, text=True, check=False)
    assert cli.returncode == 1 and f"no lab named '{name}' is up" in cli.stderr


def _agent_running(name: str) -> bool:
    try:
        lab = Lab.load(name)
    except UserError:
        return False
    return any(n.agent_pid for n in lab.topo.nodes)


def _gone(pid: int) -> bool:
    """Exited (a zombie of this process, if it was our child, counts as gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "zombie" in fh.read().lower()
    except FileNotFoundError:
        return True


def test_half_built_up_removes_what_it_made() -> None:
    name = f"t{uuid.uuid4().hex[:6]}"
    topo = Topology.make(name, "vxlan", 3, 0)
    topo.cidr = "10.244.0.0/23"  # two /24s for three nodes: the third agent cannot lease
    lab = Lab(topo)
    try:
        with pytest.raises(UserError, match=r"the agent of node\d did not come up"):
            lab.up()
        assert not any(n.startswith(netns_prefix(name)) for n in netns.listed())
        assert not os.path.exists(lab_dir(name))
        assert down(name) == []
    finally:
        down(name)


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_diagram_from_the_live_kernel(make_lab: MakeLab, tmp_path: object,
                                      suffix: str) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    out = os.path.join(str(tmp_path), f"lab.{suffix}")
    proc = subprocess.run([sys.executable, "-m", "podnet", "lab", "diagram", "--name",
                           lab.topo.name, "-o", out], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == out
    with open(out, "rb") as fh:
        data = fh.read()
    if suffix == "svg":
        text = data.decode()
        for pod in lab.topo.pods:
            assert pod.ip in text
        assert "podnet.1 (vxlan)" in text
    else:
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_more_nodes_than_subnets_is_a_clear_error() -> None:
    name = f"t{uuid.uuid4().hex[:6]}"
    topo = Topology.make(name, "vxlan", 2, 0)
    topo.cidr = "10.244.0.0/23"  # two /24s
    lab = Lab(topo)
    try:
        lab.up()
        with pytest.raises(UserError, match="did not come up"):
            lab.add_node()
        with open(os.path.join(lab.node_dir(lab.topo.nodes[-1]), "agent.log")) as fh:
            log = fh.read()
        assert "no free subnet for node 'node3': all 2 /24 subnets of 10.244.0.0/23 are " \
               "leased" in log
    finally:
        down(name)


def test_vxlan_direct_routing_for_on_link_peers(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    _reinit(lab, "vxlan", "--direct-routing")
    for node in ("node1", "node2"):
        lab.restart_agent(node)
    routes = sh(lab, "node1", "ip", "route")
    peer = lab.conflist(lab.topo.node("node2"))["plugins"][0]["ipam"]["subnet"]
    assert f"{peer} via 192.168.100.12 dev eth0 proto 88" in routes  # direct, not tunnelled
    assert tunnels(lab, "node1") == {}  # nor encapsulated by the fast path
    report = verify(lab)
    assert report.ok, failures(report)
    # A direct route needs no VTEP entries: the diagnosis must not ask for them.
    st = status(lab)
    by_name = {e.name: e for e in endpoints_of(st)}
    assert explain(by_name["node1-p1"], by_name["node2-p1"], lab_lacks(st)) == [
        "node1 and node2 hold every route and entry for each other: a hop dropped it "
        "(firewall, MTU, the router or the underlay)"]
