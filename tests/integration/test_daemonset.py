"""The Kubernetes manifest against a real runtime: podnet's image (built here by
scripts/build-image.sh) runs the DaemonSet's init container and agent with exactly the
manifest's command, capabilities, mounts and environment (podman, as kubelet would run them),
beside a TLS etcd; the agent becomes ready on /healthz and wires a pod through its socket. The
podman invocation is derived from the manifest, so the two cannot drift apart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from podnet.cli import agent_options, build_parser
from podnet.cni.invoke import Runtime
from podnet.lab.daemonset import containers_conf, expand, host_paths, pod_spec, podman_run
from podnet.netlink import netns
from tests.conftest import ns_run
from tests.integration.test_etcd_tls import URL, podnet, tls_etcd  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not (shutil.which("podman") and shutil.which("mmdebstrap")),
                                reason="make test installs podman and mmdebstrap")


@pytest.fixture
def podman_conf(tmp_path: Path) -> dict[str, str]:
    return containers_conf(str(tmp_path))


@pytest.fixture
def mounts() -> Iterator[Callable[[str, str], str]]:
    """A mount namespace of the test's; bind(src, dst) mounts in it; its path."""
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "slave", "sleep",
                               "infinity"])
    while os.readlink(f"/proc/{holder.pid}/exe") != shutil.which("sleep"):
        time.sleep(0.01)
    path = f"/proc/{holder.pid}/ns/mnt"

    def bind(src: str, dst: str) -> str:
        subprocess.run(["nsenter", f"--mount={path}", "mount", "--bind", src, dst], check=True)
        return path

    yield bind
    holder.kill()
    holder.wait()


def test_the_manifests_commands_are_accepted_by_podnet() -> None:
    spec = pod_spec()
    env = {"NODE_NAME": "node1", "PODNET_ETCD": "https://10.0.0.10:2379"}
    for container in spec["initContainers"] + spec["containers"]:
        command = expand(container["command"], env)
        assert command[:3] == ["python3", "-m", "podnet"]
        args = build_parser().parse_args(command[3:])
        if args.command == "agent":
            agent_options(args)
    agent = spec["containers"][0]
    assert {e["name"] for e in agent["env"]} == set(env)
    for probe in ("livenessProbe", "readinessProbe"):
        assert agent[probe]["httpGet"]["path"] == "/healthz"
        assert agent[probe]["httpGet"]["port"] == 9153  # the agent's default --metrics
    assert spec["hostNetwork"] is True and {"operator": "Exists"} in spec["tolerations"]


def test_the_daemonset_runs_and_wires_a_pod(podnet_image: str, tls_etcd: tuple[str, Path],  # noqa: F811
                                            make_ns: Callable[[str], str],
                                            podman_conf: dict[str, str],
                                            mounts: Callable[[str, str], str],
                                            tmp_path: Path) -> None:
    node, certs = tls_etcd  # the node runs etcd too: its agent reaches it at 127.0.0.1
    for cmd in (["link", "add", "e0", "type", "veth", "peer", "name", "e1"],
                ["link", "set", "e0", "up"], ["link", "set", "e1", "up"],
                ["addr", "add", "192.168.61.1/24", "dev", "e0"],
                # A default route, which the agent follows to its underlay (to our own veth).
                ["route", "add", "default", "via", "192.168.61.254", "dev", "e0"]):
        subprocess.run(["nsenter", f"--net={node}", "ip", *cmd], check=True)
    # As kubeadm requires of a node: a containerised agent cannot write /proc/sys.
    subprocess.run(["nsenter", f"--net={node}", "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                   check=True)
    tls = ["--etcd-ca", str(certs / "ca.crt"), "--etcd-cert", str(certs / "client.crt"),
           "--etcd-key", str(certs / "client.key")]
    init = podnet(node, "cluster", "init", "--etcd", URL, *tls, "--cidr", "10.246.0.0/16",
                  "--backend", "host-gw")
    assert init.returncode == 0, init.stderr
    # The Secret, as kubelet projects it.
    secret = tmp_path / "secret"
    secret.mkdir()
    for key, src in (("ca.crt", "ca.crt"), ("client.crt", "client.crt"),
                     ("client.key", "client.key")):
        shutil.copy(certs / src, secret / key)
    spec = pod_spec()
    volumes = {name: str(tmp_path / "host" / path.strip("/"))
               for name, path in host_paths(spec).items()}
    volumes["host-python"] = "/usr/bin"  # the host's own, read-only
    volumes["etcd-certs"] = str(secret)
    volumes["netns"] = netns.NETNS_DIR  # where make_ns puts the pod's, as a runtime would
    for path in volumes.values():
        os.makedirs(path, exist_ok=True)
    env = {"NODE_NAME": "ds1", "PODNET_ETCD": URL}
    tag = uuid.uuid4().hex[:6]

    init_c = spec["initContainers"][0]
    # Like the agent, in the node's namespace (hostNetwork), never the machine's own.
    run = subprocess.run(["nsenter", f"--net={node}", *podman_run(
        init_c, volumes, {}, f"pnt-init-{tag}", ("--rm",))], env=podman_conf,
        capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    shim = Path(volumes["cni-bin"]) / "podnet"
    assert shim.read_text().startswith("#!/usr/bin/python3 -IS\n")

    agent = spec["containers"][0]
    name = f"pnt-agent-{tag}"
    argv = podman_run(agent, volumes, env, name, ("-d",))
    started = subprocess.run(["nsenter", f"--net={node}", *argv],
                             env=podman_conf, capture_output=True, text=True, timeout=120,
                             check=False)
    try:
        assert started.returncode == 0, started.stderr
        conflist_path = Path(volumes["cni-conf"]) / "10-podnet.conflist"
        deadline = time.monotonic() + 60
        while not (conflist_path.exists() and healthz(node) == 200):
            assert time.monotonic() < deadline, logs(name, podman_conf)
            time.sleep(0.2)
        conflist = json.loads(conflist_path.read_text())
        assert conflist["plugins"][0]["socket"] == "/run/podnet/cni.sock"
        # With the manifest's capabilities, the eBPF fast path too.
        assert "fast path attached" in logs(name, podman_conf)
        assert conflist["plugins"][0]["fastPathUplink"] == "e0"
        # The node as its runtime sees it: the agent's socket at /run/podnet.
        pod = make_ns("dspod")
        node_mounts = mounts(volumes["run-podnet"], "/run/podnet")
        rt = Runtime(path=[volumes["cni-bin"], "/usr/lib/cni"], node_netns=node,
                     node_mounts=node_mounts)
        result = rt.add_list(conflist, "dspod1", pod)
        ip = result["ips"][0]["address"].split("/")[0]
        assert ip.startswith("10.246.")
        assert ns_run(node, "ping", "-c1", "-W2", ip).returncode == 0
        records = Path(volumes["cni-ipam"]) / "networks" / "podnet"
        assert ip in os.listdir(records)  # the server in the container did the IPAM
        # The agent in its container probes from the pod for `podnet verify --etcd`: it sees
        # the pod's namespace through the manifest's mount, made after the container started.
        deadline = time.monotonic() + 15
        while True:
            out = podnet(node, "verify", "--etcd", URL, *tls, "--json")
            report = json.loads(out.stdout or "{}")
            if "dspod1" in report.get("own_address", {}) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert out.returncode == 0 and report["ok"], (out.stderr, report)
        assert [(p["src"], p["dst"]) for p in report["pairs"]] == [("ds1", "dspod1"),
                                                                    ("dspod1", "ds1")]
        rt.del_list(conflist, "dspod1", pod)
        assert ip not in os.listdir(records)
        # As kubelet stops it: SIGTERM, then the grace period.
        start = time.monotonic()
        stop = subprocess.run(["podman", "stop", "-t", str(
            spec["terminationGracePeriodSeconds"]), name], env=podman_conf,
            capture_output=True, text=True, timeout=60, check=False)
        assert stop.returncode == 0, stop.stderr
        print(f"podman stop: {time.monotonic() - start:.2f} s")
        assert "shutting down; the data plane stays as it is" in logs(name, podman_conf)
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], env=podman_conf,
                       capture_output=True, check=False)


def healthz(node: str) -> int:
    with netns.entered(node):
        try:
            return int(urllib.request.urlopen("http://127.0.0.1:9153/healthz", timeout=2).status)
        except (urllib.error.URLError, OSError):
            return 0


def logs(name: str, env: dict[str, str]) -> str:
    out = subprocess.run(["podman", "logs", name], env=env, capture_output=True, text=True,
                         check=False)
    return out.stdout + out.stderr


