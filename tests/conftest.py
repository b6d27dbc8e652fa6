"""Fixtures: uniquely named network namespaces that are always removed, installed plugins,
a cni-server inside a node namespace. Nothing touches the root namespace."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from podnet.cni.invoke import Runtime
from podnet.install import install_cni
from podnet.netlink import netns

REFERENCE_DIR = "/usr/lib/cni"
RUN_ID = uuid.uuid4().hex[:6]


def _kill_inside(path: str) -> None:
    for pid in netns.pids_in(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def make_ns(request: pytest.FixtureRequest) -> Iterator[Callable[[str], str]]:
    """make_ns(role) -> path of a new namespace named pnt-<run>-<role>-<n>."""
    made: list[str] = []

    def make(role: str) -> str:
        name = f"pnt-{RUN_ID}-{role}-{uuid.uuid4().hex[:6]}"
        made.append(name)
        return netns.create(name)

    yield make
    for name in reversed(made):
        path = os.path.join(netns.NETNS_DIR, name)
        if os.path.exists(path):
            _kill_inside(path)
            netns.remove(name)


@pytest.fixture
def node(make_ns: Callable[[str], str]) -> str:
    return make_ns("node")


@pytest.fixture(scope="session")
def cni_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    bin_dir = tmp_path_factory.mktemp("cni-bin")
    install_cni(str(bin_dir))
    return str(bin_dir)


@pytest.fixture
def runtime(node: str, cni_bin: str) -> Runtime:
    return Runtime(path=[cni_bin, REFERENCE_DIR], node_netns=node)


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    return str(tmp_path / "ipam")


def start_cni_server(node: str, sock: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["nsenter", f"--net={node}", sys.executable, "-m", "podnet", "cni-server",
         "--socket", sock])
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("cni-server did not start")
        time.sleep(0.05)
    return proc


@pytest.fixture
def cni_server(node: str, tmp_path: Path) -> Iterator[str]:
    sock = str(tmp_path / "cni.sock")
    proc = start_cni_server(node, sock)
    yield sock
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ns_run(path: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={path}", *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)


def rps_masks(ns_path: str, ifname: str) -> list[int]:
    """A device's receive steering masks, one per receive queue, read through `ip netns exec`,
    which mounts the namespace's own sysfs (`nsenter` would show the host's devices)."""
    out = subprocess.run(["ip", "netns", "exec", os.path.basename(ns_path), "sh", "-c",
                          f"cat /sys/class/net/{ifname}/queues/rx-*/rps_cpus"],
                         capture_output=True, text=True, check=True)
    return [int(mask.replace(",", ""), 16) for mask in out.stdout.split()]


def links_in(path: str) -> list[str]:
    from podnet.netlink.netns import iproute_in

    ipr = iproute_in(path)
    try:
        return [str(m.get_attr("IFLA_IFNAME")) for m in ipr.get_links()]
    finally:
        ipr.close()


def healthz(path: str, port: int = 9153) -> tuple[int, str]:
    """An agent's /healthz in the namespace at `path`: status and body (0 where nothing
    answers)."""
    import urllib.error
    import urllib.request

    with netns.entered(path):
        try:
            resp = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
            return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, OSError) as exc:  # nothing listens (yet)
            return 0, str(exc)


@pytest.fixture(scope="session")
def podnet_image() -> str:
    """podnet's image, as `make image` builds it (kept between runs while the source is the
    same); the name the Kubernetes manifest runs."""
    import shutil

    from podnet.lab.daemonset import pod_spec

    if not (shutil.which("podman") and shutil.which("mmdebstrap")):
        pytest.skip("make test installs podman and mmdebstrap")
    root = Path(__file__).resolve().parents[1]
    build = subprocess.run([str(root / "scripts" / "build-image.sh")], capture_output=True,
                           text=True, timeout=900, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    spec = pod_spec()
    images = {c["image"] for c in spec["containers"] + spec["initContainers"]}
    assert len(images) == 1
    return images.pop()
