"""The path kubelet takes: containerd's CRI (RunPodSandbox, PodSandboxStatus, StopPodSandbox,
RemovePodSandbox over gRPC) in a lab node, in a mount namespace of its own, with podnet's
plugins and the agent's conflist; the agent's cni-server runs apart from it."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ns_run
from tests.cri.containerd import running
from tests.lab.conftest import MakeLab
from tests.lab.test_lab_ops import subnet_of

pytestmark = pytest.mark.skipif(not shutil.which("containerd") or not os.path.exists(
    "/bin/busybox"), reason="containerd and busybox-static are installed by make test")


def test_sandboxes_get_the_pod_network(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1)
    node = lab.topo.node("node1")
    conf_dir = os.path.join(lab.node_dir(node), "net.d")
    data_dir = lab.conflist(node)["plugins"][0]["ipam"]["dataDir"]
    subnet = ipaddress.ip_network(subnet_of(lab, "node1"))
    with running(lab.target_netns("node1"), conf_dir, tmp_path / "gen") as ctrd:
        version = ctrd.runtime.Version(ctrd.pb2.VersionRequest(version="v1"), timeout=10)
        assert version.runtime_name == "containerd"
        sandboxes = [ctrd.run_sandbox(name, "shop") for name in ("web-1", "web-2")]
        ips = []
        for sandbox in sandboxes:
            reply = ctrd.runtime.PodSandboxStatus(ctrd.pb2.PodSandboxStatusRequest(
                pod_sandbox_id=sandbox, verbose=True), timeout=30)
            assert reply.status.state == ctrd.pb2.SANDBOX_READY
            ips.append(reply.status.network.ip)
            # The premise: containerd's namespace is not mounted where the cni-server looks.
            spec = json.loads(reply.info["info"])["runtimeSpec"]["linux"]["namespaces"]
            path = next(n["path"] for n in spec if n["type"] == "network")
            assert not os.path.ismount(path)
        assert len(set(ips)) == 2 and all(ipaddress.ip_address(ip) in subnet for ip in ips)
        other = lab.topo.pods[-1]  # on node2
        assert other.node == "node2"
        for ip in ips:
            assert ns_run(lab.target_netns("node1"), "ping", "-c1", "-W2", ip).returncode == 0
            assert ns_run(lab.target_netns(other.name), "ping", "-c1", "-W2",
                          ip).returncode == 0
        held = set(os.listdir(os.path.join(data_dir, "podnet")))
        assert set(ips) <= held
        for sandbox in sandboxes:
            ctrd.remove(sandbox)
        assert not set(ips) & set(os.listdir(os.path.join(data_dir, "podnet")))
        assert "setns" not in ctrd.log()
