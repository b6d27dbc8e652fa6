"""Each backend in the lab: every pair connects without NAT, and down leaves nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podnet.lab.lab import Lab, ns_path
from tests.lab.conftest import MakeLab, failures, verify


def join_and_leave(lab: Lab) -> None:
    """A node that joins is reachable from all within seconds; one that leaves is gone from
    every peer's tables."""
    node = lab.add_node()
    lab.add_pod(node.name)
    report = verify(lab)
    assert report.ok, failures(report)
    # l2 programs nothing per peer (switching learns), so there only the FDB entries count.
    gone = lab.conflist(node)["plugins"][0]["ipam"].get("subnet") or "no subnet"
    gone_ip = lab.topo.node_ip(node)
    lab.remove_node(node.name)
    for peer in lab.topo.nodes:
        ns = ns_path(peer.netns(lab.topo.name))
        for _ in range(50):
            tables = "".join(subprocess.run(["nsenter", f"--net={ns}", *cmd], capture_output=True,
                                            text=True, check=True).stdout
                             for cmd in (["ip", "route"], ["bridge", "fdb", "show"]))
            if gone not in tables and f"dst {gone_ip} " not in tables:
                break
            time.sleep(0.1)
        assert gone not in tables and f"dst {gone_ip} " not in tables
    report = verify(lab)
    assert report.ok, failures(report)


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_backend_connects_every_pair(make_lab: MakeLab, backend: str) -> None:
    lab = make_lab(backend)
    report = verify(lab)
    assert report.ok, failures(report)
    assert len(report.pairs) == 6 * 5 + 2 * 3 * 6
    assert all(p.seen_source for p in report.pairs)
    join_and_leave(lab)


def test_vxlan_mtu_and_device(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    conf = lab.conflist(lab.topo.nodes[0])
    assert conf["plugins"][0]["mtu"] == 1450  # underlay 1500 - 50
    out = subprocess.run(["nsenter", f"--net={ns_path(lab.topo.nodes[0].netns(lab.topo.name))}",
                          "ip", "-d", "link", "show", "podnet.1"], capture_output=True,
                         text=True, check=True).stdout
    assert "vxlan id 1" in out and "dstport 8472" in out and "nolearning" in out


def test_status_json_keys(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    out = subprocess.run([sys.executable, "-m", "podnet", "lab", "status", "--name",
                          lab.topo.name, "--json"], capture_output=True, text=True, check=True)
    st = json.loads(out.stdout)
    assert set(st) >= {"name", "backend", "nodes", "pods"}
    assert set(st["nodes"][0]) >= {"name", "netns", "node_ip", "pod_subnet", "pod_subnets",
                                   "agent_pid"}
    assert set(st["pods"][0]) == {"name", "netns", "ip", "ips", "node", "namespace", "pod_name",
                                  "labels"}
    assert (st["pods"][0]["namespace"], st["pods"][0]["labels"]) == ("default", {})
    assert st["pods"][0]["ips"] == [st["pods"][0]["ip"]] and st["ip_family"] == "ipv4"
    assert st["nodes"][0]["pod_subnets"] == [st["nodes"][0]["pod_subnet"]]
    assert all(os.path.exists(f"/proc/{n['agent_pid']}") for n in st["nodes"])


def test_l2_one_domain(make_lab: MakeLab) -> None:
    lab = make_lab("l2")
    report = verify(lab)
    assert report.ok, failures(report)
    pod = lab.topo.pods[0]
    out = subprocess.run(["nsenter", f"--net={ns_path(pod.netns(lab.topo.name))}", "ip", "-4",
                          "-br", "addr", "show", "eth0"], capture_output=True, text=True,
                         check=True).stdout
    assert out.split()[2].endswith("/16")  # every pod in the one /16
    node = subprocess.run(["nsenter", f"--net={ns_path(lab.topo.nodes[0].netns(lab.topo.name))}",
                           "ip", "-4", "-br", "addr"], capture_output=True, text=True,
                          check=True).stdout
    assert "podnet-br" in node and "192.168.100.11/24" in node  # the node IP moved with eth0
    join_and_leave(lab)


@pytest.mark.parametrize("mode", ["bgp", "static"])
def test_gateway_router_routes_pod_subnets(make_lab: MakeLab, mode: str) -> None:
    lab = make_lab("gateway", underlay="routed", gateway_mode=mode)
    report = verify(lab)
    assert report.ok, failures(report)
    routes = subprocess.run(["nsenter", f"--net={lab.target_netns('rt')}", "ip", "route"],
                            capture_output=True, text=True, check=True).stdout
    for n in lab.topo.nodes:
        assert f"via {lab.topo.node_ip(n)}" in routes
    node_routes = subprocess.run(["nsenter", f"--net={lab.target_netns('node1')}", "ip",
                                  "route"], capture_output=True, text=True, check=True).stdout
    pod_routes = [r for r in node_routes.splitlines() if r.startswith("10.244.")]
    assert len(pod_routes) == 1 and "kube-bridge" in pod_routes[0]  # no peer routes on nodes
    gone = lab.conflist(lab.topo.node("node2"))["plugins"][0]["ipam"]["subnet"]
    lab.remove_node("node2")  # withdrawn from the router
    for _ in range(100):
        routes = subprocess.run(["nsenter", f"--net={lab.target_netns('rt')}", "ip", "route"],
                                capture_output=True, text=True, check=True).stdout
        if gone not in routes:
            break
        time.sleep(0.1)
    assert gone not in routes


def test_host_gw_refuses_peer_off_link(make_lab: MakeLab) -> None:
    lab = make_lab("host-gw", nodes=2, pods=0, underlay="routed")
    path = os.path.join(lab.node_dir(lab.topo.node("node1")), "agent.log")
    want = "peer node2 (192.168.102.2) is not on-link"
    for _ in range(50):  # node2's lease may reach node1 just after the lab is up
        if want in Path(path).read_text():
            break
        time.sleep(0.1)
    assert want in Path(path).read_text()
