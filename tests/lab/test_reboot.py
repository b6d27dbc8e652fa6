"""A node that reboots: its namespace and every kernel entry gone, its pods gone without a CNI
DEL, then the node back with its address. With its disk kept it has its subnet again within
its lease; with its disk lost it gets a new lease at once (the earlier run's is released, not
waited out) and nothing stale stays programmed anywhere."""

from __future__ import annotations

import ipaddress
import json

from tests.lab.conftest import MakeLab, failures, verify
from tests.lab.test_agent import etcdctl
from tests.lab.test_lab_ops import sh, subnet_of, wait_for


def test_a_rebooted_node_keeps_its_subnet(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    before = subnet_of(lab, "node1")
    lease = json.loads(etcdctl(lab, "get", "--print-value-only", "/podnet/nodes/node1"))
    old_ip = next(p.ip for p in lab.topo.pods if p.node == "node1")
    lab.reboot_node("node1", keep_state=True)
    assert subnet_of(lab, "node1") == before
    again = json.loads(etcdctl(lab, "get", "--print-value-only", "/podnet/nodes/node1"))
    assert again["leaseID"] == lease["leaseID"]  # the same lease, kept alive
    # The runtime makes the node's pods again: no address given twice.
    pods = [lab.add_pod("node1"), lab.add_pod("node1")]
    ips = [p.ip for p in lab.topo.pods]
    assert len(set(ips)) == len(ips) and old_ip not in [p.ip for p in pods]
    assert all(ipaddress.ip_address(p.ip) in ipaddress.ip_network(before) for p in pods)
    report = verify(lab)
    assert report.ok, failures(report)


def test_a_node_rebooted_without_its_disk_gets_a_new_lease(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    old_subnet = subnet_of(lab, "node2")
    old = json.loads(etcdctl(lab, "get", "--print-value-only", "/podnet/nodes/node2"))
    lab.reboot_node("node2", keep_state=False)  # would wait out the old lease without release
    new = json.loads(etcdctl(lab, "get", "--print-value-only", "/podnet/nodes/node2"))
    assert new["leaseID"] != old["leaseID"] and new["subnet"] == subnet_of(lab, "node2")
    keys = etcdctl(lab, "get", "--keys-only", "--prefix", "/podnet/subnets/").split()
    assert len(keys) == 2  # node1's and node2's new one: the old lease went with its keys
    if new["subnet"] != old_subnet:
        assert wait_for(lambda: old_subnet not in sh(lab, "node1", "ip", "route"), 5.0)
    assert wait_for(lambda: new["subnet"] in sh(lab, "node1", "ip", "route"), 5.0)
    lab.add_pod("node2")
    report = verify(lab)
    assert report.ok, failures(report)
