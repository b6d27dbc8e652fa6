"""The agent as a service: metrics and health, the CNI path while it is down, refusing a
network change under live leases, and a single node on the file datastore."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from podnet.cni.invoke import Runtime
from podnet.install import install_cni
from podnet.lab.lab import ns_path
from podnet.netlink import netns
from tests.conftest import ns_run
from tests.lab.conftest import MakeLab, failures, verify
from tests.lab.test_lab_ops import wait_for


def test_metrics_and_healthz(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=0)
    lab.add_pod("node1")

    def scrape(path: str) -> tuple[int, str]:
        with netns.entered(lab.target_netns("node1")), urllib.request.urlopen(
                f"http://127.0.0.1:9153{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()

    # node2's lease comes to node1's agent as an event, which may follow the lab's start.
    assert wait_for(lambda: "podnet_routes_programmed 1" in scrape("/metrics")[1], 10.0)
    text = scrape("/metrics")[1]
    assert "podnet_leases_known 2" in text and "podnet_routes_programmed 1" in text
    assert "podnet_datastore_up 1" in text and "podnet_reconcile_runs_total" in text
    assert "podnet_fast_path_pods 1" in text
    assert scrape("/healthz") == (200, "ok\n")


def test_pods_start_while_the_agent_is_down(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    node1 = lab.topo.node("node1")
    os.kill(node1.agent_pid, signal.SIGKILL)  # its socket stays, nobody answers
    time.sleep(0.2)
    pod = lab.add_pod("node1")  # the plugin does the work in-process
    lab.restart_agent("node1")
    assert pod.ip
    report = verify(lab)
    assert report.ok, failures(report)


def test_network_change_refused_under_live_leases(make_lab: MakeLab) -> None:
    lab = make_lab("vxlan", nodes=1, pods=0)
    proc = subprocess.run(["nsenter", f"--net={lab.target_netns('cp')}", sys.executable, "-m",
                           "podnet", "cluster", "init", "--etcd", lab.topo.etcd_url, "--cidr",
                           "10.99.0.0/16", "--backend", "vxlan"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 1 and "would orphan them (--force to replace it anyway)" in \
        proc.stderr


def test_single_node_on_the_file_datastore(make_ns: Callable[[str], str],
                                           tmp_path: Path) -> None:
    node = make_ns("node")
    for cmd in (["link", "set", "lo", "up"], ["link", "add", "e0", "type", "veth", "peer",
                                              "name", "e1"],
                ["link", "set", "e0", "up"], ["link", "set", "e1", "up"],
                ["addr", "add", "192.168.60.1/24", "dev", "e0"]):
        subprocess.run(["nsenter", f"--net={node}", "ip", *cmd], check=True)
    store = f"file://{tmp_path}/store"
    podnet = [sys.executable, "-m", "podnet"]
    subprocess.run(["nsenter", f"--net={node}", *podnet, "cluster", "init", "--etcd", store,
                    "--cidr", "10.245.0.0/16", "--backend", "host-gw"], check=True,
                   capture_output=True)
    agent = subprocess.Popen(["nsenter", f"--net={node}", *podnet, "agent", "--etcd", store,
                              "--node-name", "solo", "--node-ip", "192.168.60.1",
                              "--cni-conf-dir", f"{tmp_path}/net.d", "--cni-socket",
                              f"{tmp_path}/cni.sock", "--state-dir", f"{tmp_path}/state",
                              "--ipam-data-dir", f"{tmp_path}/ipam", "--metrics", "127.0.0.1:0"])
    try:
        conf = tmp_path / "net.d" / "10-podnet.conflist"
        for _ in range(200):
            if conf.exists() and (tmp_path / "cni.sock").exists():
                break
            time.sleep(0.1)
        conflist = json.loads(conf.read_text())
        assert conflist["plugins"][0]["ipam"]["subnet"].startswith("10.245.")
        bin_dir = tmp_path / "bin"
        install_cni(str(bin_dir))
        pod = make_ns("pod")
        rt = Runtime(path=[str(bin_dir), "/usr/lib/cni"], node_netns=node)
        result = rt.add_list(conflist, "solo1", pod)
        gateway = result["ips"][0]["gateway"]
        assert ns_run(pod, "ping", "-c1", "-W2", gateway).returncode == 0
        rt.del_list(conflist, "solo1", pod)
    finally:
        agent.terminate()
        agent.wait(10)
    assert os.path.exists(ns_path(os.path.basename(node)))
