"""The agent against a real etcd: leases, joins and leaves, outages, hostile leases."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from podnet.datastore.etcd import EtcdStore
from podnet.datastore.open import open_store
from podnet.lab.lab import Lab, status
from podnet.netlink import netns
from tests.lab.conftest import MakeLab, failures, verify
from tests.lab.test_lab_ops import sh, subnet_of, wait_for


def etcdctl(lab: Lab, *argv: str) -> str:
    return subprocess.run(["nsenter", f"--net={lab.target_netns('cp')}", "etcdctl",
                           "--endpoints", lab.topo.etcd_url, *argv], capture_output=True,
                          text=True, check=True, env={**os.environ, "ETCDCTL_API": "3"}).stdout


def test_subnets_distinct_join_within_a_second(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=3, pods=0)
    subnets = [n["pod_subnet"] for n in status(lab)["nodes"]]
    assert len(set(subnets)) == 3
    node = lab.add_node()  # returns once the new agent holds its lease
    new = subnet_of(lab, node.name)
    start = time.monotonic()
    for peer in ("node1", "node2", "node3"):
        assert wait_for(lambda p=peer: new in sh(lab, p, "ip", "route"), 1.0)
    assert time.monotonic() - start < 1.0


def test_corrupt_and_hostile_leases_are_skipped(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    own = subnet_of(lab, "node1")
    # Keys of subnets no node holds (leases are spread at random over the /16).
    held = {subnet_of(lab, n.name) for n in lab.topo.nodes}
    a, b, c, d = [str(net) for net in ipaddress.IPv4Network("10.244.0.0/16").subnets(8)
                  if str(net) not in held][-4:]
    key = "/podnet/subnets/{}".format
    hostile = {
        key(a.replace("/", "-")): "{not json",
        key(b.replace("/", "-")): json.dumps(  # claims another node's subnet
            {"subnet": own, "node": "evil", "nodeIP": "192.168.100.66", "attrs": {}}),
        key(c.replace("/", "-")): json.dumps(  # outside the cluster network
            {"subnet": "10.99.0.0/24", "node": "evil2", "nodeIP": "192.168.100.67"}),
        key(d.replace("/", "-")): json.dumps(  # a pod address as node IP
            {"subnet": d, "node": "evil3", "nodeIP": "10.244.1.5"}),
    }
    for k, value in hostile.items():
        etcdctl(lab, "put", k, value)
    time.sleep(1.0)
    for n in lab.topo.nodes:
        assert os.path.exists(f"/proc/{n.agent_pid}")
        routes = sh(lab, n.name, "ip", "route")
        assert not [net for net in (a, b, c, d, "10.99.0.0/24") if f"{net} " in routes], routes
    log = Path(lab.node_dir(lab.topo.node("node2")), "agent.log").read_text()
    assert f"skipping lease {key(a.replace('/', '-'))}" in log
    assert "payload claims subnet" in log
    report = verify(lab)
    assert report.ok, failures(report)


def test_second_agent_with_same_name_refuses(make_lab: MakeLab, tmp_path: object) -> None:
    lab = make_lab("vxlan", nodes=1, pods=0)
    proc = subprocess.run(
        ["nsenter", f"--net={lab.target_netns('cp')}", sys.executable, "-m", "podnet", "agent",
         "--etcd", lab.topo.etcd_url, "--node-name", "node1", "--iface", "eth0",
         "--cni-conf-dir", f"{tmp_path}/net.d", "--state-dir", f"{tmp_path}/state",
         "--cni-socket", f"{tmp_path}/cni.sock", "--metrics", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "already held by another live agent" in proc.stderr
    held = json.loads(etcdctl(lab, "get", "--print-value-only", "/podnet/nodes/node1"))
    assert held["subnet"] == subnet_of(lab, "node1")  # the first agent's lease is untouched


def test_lease_kept_across_a_restart_gets_its_full_ttl(make_lab: MakeLab) -> None:
    # An agent restarted late in its lease's life must not lose it before its first renewal.
    lab = make_lab("vxlan", nodes=0, pods=0)
    with netns.entered(lab.target_netns("cp")):
        store = open_store(lab.topo.etcd_url)
        assert isinstance(store, EtcdStore)
        config = store.get_config()
        assert config is not None
        held = store.acquire("n1", "192.168.100.99", {}, 6, config, None)
        time.sleep(3)
        again = store.acquire("n1", "192.168.100.99", {}, 6, config, held)
        ttl = store._post("/kv/lease/timetolive", {"ID": again.lease_id})["TTL"]
    assert again.lease_id == held.lease_id and int(ttl) >= 5
