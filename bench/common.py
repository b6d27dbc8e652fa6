"""What the CNI benchmarks share: a node namespace running the cni-server, pod namespaces,
the installed plugins, all removed afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from podnet.cni.invoke import Runtime
from podnet.install import install_cni
from podnet.netlink import netns


@dataclass
class Node:
    runtime: Runtime
    socket: str
    work: str
    pods: list[str]


def start_server(node: str, sock: str, env: dict[str, str] | None = None
                 ) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(["nsenter", f"--net={node}", sys.executable, "-m", "podnet",
                               "cni-server", "--socket", sock], env=env)
    while not os.path.exists(sock):
        if server.poll() is not None:
            raise SystemExit(f"the cni-server for {sock} did not start")
        time.sleep(0.05)
    return server


def source_tree(rev: str, work: str) -> str:
    """That revision's `src/` (its package's parent), extracted under `work`."""
    src = os.path.join(work, f"rev-{rev}")
    os.makedirs(src)
    archive = subprocess.run(["git", "archive", rev, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", src], input=archive.stdout, check=True)
    return os.path.join(src, "src")


@contextlib.contextmanager
def release(rev: str, node: str, work: str) -> Iterator[tuple[str, str]]:
    """Another revision's plugins and cni-server on the same node, for a side-by-side run:
    (its bin dir, its socket)."""
    tree = source_tree(rev, work)
    env = {**os.environ, "PYTHONPATH": tree}
    root = os.path.dirname(tree)
    bin_dir, sock = os.path.join(root, "bin"), os.path.join(root, "cni.sock")
    subprocess.run([sys.executable, "-c", "import sys; from podnet.install import install_cni; "
                    "install_cni(sys.argv[1])", bin_dir], env=env, check=True)
    server = start_server(node, sock, env)
    try:
        yield bin_dir, sock
    finally:
        server.terminate()
        server.wait()


@contextlib.contextmanager
def node_with_server(pods: int) -> Iterator[Node]:
    tag = uuid.uuid4().hex[:4]
    work = tempfile.mkdtemp(prefix="pnbench-")
    names = [f"pnb-{tag}-node"] + [f"pnb-{tag}-p{i}" for i in range(pods)]
    server = None
    try:
        node, *paths = (netns.create(n) for n in names)
        bin_dir = os.path.join(work, "bin")
        install_cni(bin_dir)
        sock = os.path.join(work, "cni.sock")
        server = start_server(node, sock)
        yield Node(Runtime(path=[bin_dir, "/usr/lib/cni"], node_netns=node), sock, work, paths)
    finally:
        if server:
            server.terminate()
            server.wait()
        for name in names:
            netns.remove(name)
        shutil.rmtree(work, ignore_errors=True)


def bridge_conf(kind: str, bridge: str, subnet: str, ipam: str, data_dir: str,
                **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": f"bench-{kind}-{bridge}", "type": kind,
            "bridge": bridge, "isDefaultGateway": True, **extra,
            "ipam": {"type": ipam, "subnet": subnet, "dataDir": data_dir}}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)
