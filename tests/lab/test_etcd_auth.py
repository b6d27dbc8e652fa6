"""Per-node etcd credentials: with etcd's authentication on, each node's agent runs as a user
of its own that reads the cluster and writes only its own keys. A node's leaked password cannot
take or delete another node's lease, change the config or delete a policy; the cluster works."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from podnet.datastore.base import LeaseRefused, PermissionDenied
from podnet.datastore.credentials import user_of
from podnet.lab.lab import Lab, ns_path, status
from podnet.netlink import netns
from tests.lab.conftest import PODNET, MakeLab, failures, verify, verify_etcd, wait_published


@pytest.fixture
def lab(make_lab: MakeLab) -> Iterator[Lab]:
    yield make_lab("vxlan", nodes=2, pods=1, etcd_auth=True)


def test_a_nodes_credentials_write_only_its_own_keys(lab: Lab) -> None:
    leases = {n["name"]: n["pod_subnet"] for n in status(lab)["nodes"]}
    node2_key = "/podnet/subnets/" + leases["node2"].replace("/", "-")
    with netns.entered(ns_path(lab.prefix + "cp")):
        root, node1 = lab.etcd_store(), lab.etcd_store(lab.topo.node("node1"))
        try:
            root.put("/podnet/policies/default/deny-all", json.dumps({"kind": "NetworkPolicy"}))
            config = node1.get_config()  # it reads the cluster
            assert config is not None and len(node1.pods()) == 2
            for attempt in (lambda: node1.put(node2_key, "{}"),
                            lambda: node1.delete(node2_key),
                            lambda: node1.put_config(config),
                            lambda: node1.delete("/podnet/config"),
                            lambda: node1.delete("/podnet/policies/default/deny-all"),
                            lambda: node1.put("/podnet/pods/node2/veth0", "{}"),
                            lambda: node1.put("/podnet/assignments/node1", "{}")):
                with pytest.raises(PermissionDenied, match="permission denied"):
                    attempt()
            # Nor can it lease another node's subnet under another name.
            with pytest.raises((PermissionDenied, LeaseRefused)):
                node1.acquire("node9", "192.168.100.19", {}, 15, config, None)
            assert root.get(node2_key) is not None and root.get_config() == config
            assert root.get("/podnet/policies/default/deny-all") is not None
        finally:
            root.close()
            node1.close()
    # The nodes work on, under their own users, also when one restarts and one joins.
    lab.restart_agent("node1")
    node = lab.add_node()
    lab.add_pod(node.name)
    assert {n["name"]: n["pod_subnet"] for n in status(lab)["nodes"]}.items() >= leases.items()
    report = verify(lab)
    assert report.ok, failures(report)
    wait_published(lab)
    code, remote, err = verify_etcd(lab)
    assert code == 0 and remote is not None and remote["ok"], (err, remote)
    with open(f"{lab.node_dir(node)}/agent.log") as fh:
        assert "permission denied" not in fh.read()
    assert user_of(node.name) in lab.etcd_args(node)


def test_a_wrong_password_is_named(lab: Lab, tmp_path: object) -> None:
    bad = f"{tmp_path}/bad.password"
    with open(bad, "w") as fh:
        fh.write("not-it\n")
    proc = subprocess.run(["nsenter", f"--net={ns_path(lab.prefix + 'cp')}", *PODNET,
                           "cluster", "show", "--etcd", lab.topo.etcd_url, "--etcd-user",
                           user_of("node1"), "--etcd-password-file", bad],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"podnet cluster show: etcd refused /auth/authenticate for "
                                  f"user {user_of('node1')}"), proc.stderr
