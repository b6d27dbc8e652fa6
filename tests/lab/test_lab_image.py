"""A lab whose agents run as the Kubernetes DaemonSet runs them: from podnet's image, with the
manifest's own command, capabilities, mounts and environment (podman in each node's namespace),
beside an etcd with TLS; the plugins are the ones the init container installed. The cluster
passes `podnet verify`, also after nodes come and go."""

from __future__ import annotations

import os
from pathlib import Path

from podnet.lab.lab import ns_path
from tests.lab.conftest import MakeLab, failures, verify, verify_etcd, wait_published


def _in_container(pid: int) -> bool:
    """The process's root holds the image's podnet (this machine's has none there)."""
    assert not os.path.exists("/usr/local/lib/python3.11/dist-packages/podnet")
    return os.path.exists(f"/proc/{pid}/root/usr/local/lib/python3.11/dist-packages/podnet")


def test_a_lab_of_daemonset_agents_verifies(make_lab: MakeLab, podnet_image: str) -> None:
    lab = make_lab("vxlan", nodes=2, pods=1, agent_image=podnet_image)
    for node in lab.topo.nodes:
        assert _in_container(node.agent_pid)
        shim = Path(lab.node_root(node)) / "opt/cni/bin/podnet"
        assert shim.read_text().startswith("#!/usr/bin/python3 -IS\n")  # the init container's
    report = verify(lab)
    assert report.ok, failures(report)
    # As a real cluster is verified: the agents in their containers probe, asked through etcd.
    wait_published(lab)
    code, remote, err = verify_etcd(lab)
    assert code == 0 and remote is not None and remote["ok"], (err, remote)
    assert len(remote["pairs"]) == 10  # 2 pod->pod, 4 node->pod, 4 pod->node
    node = lab.add_node()
    lab.add_pod(node.name)
    report = verify(lab)
    assert report.ok, failures(report)
    gone = ns_path(node.netns(lab.topo.name))
    lab.remove_node(node.name)
    assert not os.path.exists(gone) and node.mounts_pid and not os.path.exists(
        f"/proc/{node.mounts_pid}")
    lab.restart_agent("node1")
    assert _in_container(lab.topo.node("node1").agent_pid)
    report = verify(lab)
    assert report.ok, failures(report)
