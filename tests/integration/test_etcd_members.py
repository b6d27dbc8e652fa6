"""etcd as production runs it, three members: podnet is given every member's URL and goes to
the next when one does not answer (the store, `podnet cluster`, the agent); with quorum lost it
says so rather than hanging."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from podnet.datastore.base import DatastoreError
from podnet.datastore.model import NetworkConfig
from podnet.datastore.open import open_store
from podnet.netlink import netns
from tests.conftest import healthz

MEMBERS = {f"m{i}": (23890 + 10 * i, 23891 + 10 * i) for i in (1, 2, 3)}  # client, peer
URLS = [f"http://127.0.0.1:{client}" for client, _ in MEMBERS.values()]


@pytest.fixture
def cluster(make_ns: Callable[[str], str], tmp_path: Path
            ) -> Iterator[tuple[str, dict[str, subprocess.Popen[bytes]]]]:
    ns = make_ns("etcd3")
    subprocess.run(["nsenter", f"--net={ns}", "ip", "link", "set", "lo", "up"], check=True)
    initial = ",".join(f"{name}=http://127.0.0.1:{peer}" for name, (_, peer) in MEMBERS.items())
    procs = {name: subprocess.Popen(
        ["nsenter", f"--net={ns}", "etcd", "--name", name, "--data-dir", str(tmp_path / name),
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", initial, "--initial-cluster-state", "new"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, (client, peer) in MEMBERS.items()}
    store = open_store(",".join(URLS))
    deadline = time.monotonic() + 30
    with netns.entered(ns):
        while not store.healthy():
            assert time.monotonic() < deadline, "the etcd cluster did not form"
            time.sleep(0.2)
    yield ns, procs
    for proc in procs.values():
        proc.kill()
        proc.wait()


def podnet(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={ns}", sys.executable, "-m", "podnet", *argv],
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_member_down_is_passed_over_and_quorum_lost_is_said(
        cluster: tuple[str, dict[str, subprocess.Popen[bytes]]]) -> None:
    ns, procs = cluster
    every = ",".join(URLS)
    init = podnet(ns, "cluster", "init", "--etcd", every, "--cidr", "10.244.0.0/16",
                  "--backend", "host-gw")
    assert init.returncode == 0, init.stderr
    procs["m1"].send_signal(signal.SIGKILL)  # the member every client tries first
    procs["m1"].wait()
    shown = podnet(ns, "cluster", "show", "--json", "--etcd", every)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["config"]["backend"] == {"type": "host-gw"}
    store = open_store(every)
    with netns.entered(ns):
        store.put_config(NetworkConfig.make("10.245.0.0/16", None, {"type": "vxlan"}))
        config = store.get_config()
    assert config is not None and str(config.network) == "10.245.0.0/16"
    with netns.entered(ns):  # several keys in one read (a new pod's labels, its namespace's)
        store.put("/podnet/t/a", "1")
        store.put("/podnet/t/b", "2")
        assert store.get_many(["/podnet/t/a", "/podnet/t/none", "/podnet/t/b"]) == [
            "1", None, "2"]
        # More than one transaction holds (a restarted agent's first judging of a full node).
        many = [f"/podnet/t/n{i}" for i in range(300)]
        assert store.get_many([*many, "/podnet/t/b"]) == [None] * 300 + ["2"]
    procs["m2"].send_signal(signal.SIGKILL)  # one of three left: no quorum
    procs["m2"].wait()
    lost = podnet(ns, "cluster", "init", "--etcd", every, "--cidr", "10.246.0.0/16",
                  "--backend", "host-gw")
    assert lost.returncode == 1 and "Traceback" not in lost.stderr
    assert "check --etcd and that etcd runs" in lost.stderr, lost.stderr
    with netns.entered(ns), pytest.raises(DatastoreError):
        open_store(every).get_config()


def test_the_agent_keeps_its_lease_when_its_member_dies(
        cluster: tuple[str, dict[str, subprocess.Popen[bytes]]], tmp_path: Path) -> None:
    ns, procs = cluster
    every = ",".join(URLS)
    for cmd in (["link", "add", "e0", "type", "veth", "peer", "name", "e1"],
                ["link", "set", "e0", "up"], ["link", "set", "e1", "up"],
                ["addr", "add", "192.168.62.1/24", "dev", "e0"]):
        subprocess.run(["nsenter", f"--net={ns}", "ip", *cmd], check=True)
    assert podnet(ns, "cluster", "init", "--etcd", every, "--cidr", "10.244.0.0/16",
                  "--backend", "host-gw").returncode == 0
    agent = subprocess.Popen(
        ["nsenter", f"--net={ns}", sys.executable, "-m", "podnet", "agent", "--etcd", every,
         "--node-name", "n1", "--node-ip", "192.168.62.1", "--ttl", "5",
         "--reconcile-interval", "0.5", "--cni-conf-dir", f"{tmp_path}/net.d",
         "--cni-socket", f"{tmp_path}/cni.sock", "--state-dir", f"{tmp_path}/state",
         "--ipam-data-dir", f"{tmp_path}/ipam"], stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "agent.log", "w"))  # noqa: SIM115 (the agent's, for its life)
    try:
        deadline = time.monotonic() + 30
        while healthz(ns) != (200, "ok\n"):
            assert agent.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "agent.log").read_text()
            time.sleep(0.2)
        procs["m1"].send_signal(signal.SIGKILL)  # the member the agent watches and renews at
        procs["m1"].wait()
        time.sleep(8)  # longer than the lease TTL: it was renewed through another member
        shown = podnet(ns, "cluster", "show", "--json", "--etcd", every)
        assert [lease["node"] for lease in json.loads(shown.stdout)["leases"]] == ["n1"]
        assert healthz(ns) == (200, "ok\n") and agent.poll() is None
    finally:
        agent.terminate()
        agent.wait(10)
    assert os.path.exists(ns)
