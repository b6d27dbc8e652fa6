"""A real runtime: podman (CNI backend, runc) in a node namespace, with `podnet` as main plugin.
podman runs in a mount namespace of its own, as a runtime beside a containerised agent does: its
network namespace mounts are not visible to the cni-server, which enters them by the descriptors
the plugin hands it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not shutil.which("podman") or not os.path.exists(
    "/bin/busybox"), reason="podman and busybox-static are installed by make test")

APPLETS = ("sh", "sleep", "nc", "netstat", "ping")


class Podman:
    def __init__(self, node: str, base: Path, cni_bin: str, mounts_pid: int,
                 socket: str) -> None:
        self.node, self.base, self.mounts_pid = node, base, mounts_pid
        self.socket = socket  # the node's cni-server
        (base / "net").mkdir()
        conf = base / "containers.conf"
        conf.write_text(
            "[containers]\ndefault_ulimits = []\n"
            f'[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{cni_bin}", '
            f'"/usr/lib/cni"]\nnetwork_config_dir = "{base / "net"}"\n'
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def __call__(self, *argv: str, check: bool = True) -> str:
        proc = subprocess.run(
            ["nsenter", f"--target={self.mounts_pid}", "--mount", f"--net={self.node}",
             "podman", "--root", str(self.base / "root"),
             "--runroot", str(self.base / "run"), "--storage-driver", "vfs", *argv],
            env=self.env, capture_output=True, text=True, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {argv}: {proc.stderr}")
        return proc.stdout.strip()


@pytest.fixture
def podman_mounts() -> Iterator[int]:
    """A process holding a mount namespace of its own (mounts made in it stay in it)."""
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "slave", "sleep",
                               "infinity"])
    # Wait until it is inside its own mount namespace (unshare execs sleep after unsharing).
    while os.readlink(f"/proc/{holder.pid}/exe") != shutil.which("sleep"):
        time.sleep(0.01)
    yield holder.pid
    holder.kill()
    holder.wait()


@pytest.fixture
def podman(node: str, tmp_path: Path, cni_bin: str, cni_server: str,
           podman_mounts: int) -> Iterator[Podman]:
    # podman refuses a runroot path longer than 50 characters: pytest's tmp_path is longer.
    base = Path(tempfile.mkdtemp(prefix="pnpm-", dir="/tmp"))
    pm = Podman(node, base, cni_bin, podman_mounts, cni_server)
    (pm.base / "net" / "podnet.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "podnet-pm", "plugins": [{
            "type": "podnet", "socket": cni_server, "isDefaultGateway": True,
            "ipam": {"type": "podnet-ipam", "subnet": "10.33.0.0/24",
                     "dataDir": str(tmp_path / "ipam")}}]}))
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        tar.add("/bin/busybox", "bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    pm("import", str(rootfs), "localhost/pnbox:latest")
    yield pm
    pm("rm", "-f", "-a", "-t", "0", check=False)
    pm("system", "reset", "-f", check=False)
    shutil.rmtree(base, ignore_errors=True)


def test_two_containers_reach_each_other_without_nat(podman: Podman) -> None:
    for name in ("a", "b"):
        podman("run", "-d", "--name", name, "--network", "podnet-pm", "localhost/pnbox",
               "sleep", "300")
    ip = {n: podman("inspect", n, "--format",
                    "{{(index .NetworkSettings.Networks \"podnet-pm\").IPAddress}}")
          for n in ("a", "b")}
    # The namespaces podman made are not mounted where the cni-server looks.
    sandbox = podman("inspect", "a", "--format", "{{.NetworkSettings.SandboxKey}}")
    assert sandbox and not os.path.ismount(sandbox), sandbox
    assert ip["a"] != ip["b"] and all(v.startswith("10.33.0.") for v in ip.values())
    for src, dst in (("a", "b"), ("b", "a")):
        assert "1 packets received" in podman("exec", src, "ping", "-c1", "-W2", ip[dst])
        # The receiver's view of an open connection names the sender's own address.
        podman("exec", "-d", dst, "nc", "-l", "-p", "7778")
        time.sleep(0.3)
        podman("exec", "-d", src, "sh", "-c", f"sleep 5 | nc {ip[dst]} 7778")
        seen = ""
        for _ in range(25):
            seen = podman("exec", dst, "netstat", "-tn")
            if ":7778 " in seen:
                break
            time.sleep(0.2)
        # Established, or already in TIME_WAIT: either way the kernel's record of the peer.
        conns = [line.split() for line in seen.splitlines() if ":7778 " in line]
        assert conns, seen
        assert conns[0][4].removeprefix("::ffff:").rsplit(":", 1)[0] == ip[src], seen


def test_dual_stack_containers(podman: Podman, tmp_path: Path) -> None:
    """podman with a dual-stack podnet network: each container gets an address of each
    family, and reaches the other over both."""
    (podman.base / "net" / "podnet6.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "podnet-pm6", "plugins": [{
            "type": "podnet", "socket": podman.socket, "bridge": "pmbr6",
            "isDefaultGateway": True,
            "ipam": {"type": "podnet-ipam", "dataDir": str(tmp_path / "ipam6"), "ranges": [
                [{"subnet": "10.34.0.0/24"}], [{"subnet": "fd00:34::/64"}]]}}]}))
    for name in ("a6", "b6"):
        podman("run", "-d", "--name", name, "--network", "podnet-pm6", "localhost/pnbox",
               "sleep", "300")
    fmt = "{{(index .NetworkSettings.Networks \"podnet-pm6\").%s}}"
    ips = {n: (podman("inspect", n, "--format", fmt % "IPAddress"),
               podman("inspect", n, "--format", fmt % "GlobalIPv6Address"))
           for n in ("a6", "b6")}
    assert all(v4.startswith("10.34.0.") and v6.startswith("fd00:34::")
               for v4, v6 in ips.values()), ips
    for src, dst in (("a6", "b6"), ("b6", "a6")):
        for address in ips[dst]:
            assert "1 packets received" in podman("exec", src, "ping", "-c1", "-W2", address)
