"""`podnet demo`: one node, two pods wired by the installed plugin through the node's cni-server,
each pinging the other; shows what was built, then removes it all."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid

from podnet.cni.invoke import Runtime
from podnet.install import example_conflist, install_cni
from podnet.netlink import netns


def _sh(ns: str, *argv: str) -> str:
    return subprocess.run(["nsenter", f"--net={ns}", *argv], capture_output=True, text=True,
                          check=False).stdout


def run(keep: bool = False) -> int:
    tag = uuid.uuid4().hex[:4]
    names = [f"pndemo-{tag}-node", f"pndemo-{tag}-pod1", f"pndemo-{tag}-pod2"]
    work = tempfile.mkdtemp(prefix="podnet-demo-")
    server = None
    ok = True
    try:
        node, pod1, pod2 = (netns.create(n) for n in names)
        bin_dir = os.path.join(work, "bin")
        install_cni(bin_dir)
        sock = os.path.join(work, "cni.sock")
        server = subprocess.Popen(["nsenter", f"--net={node}", sys.executable, "-m", "podnet",
                                   "cni-server", "--socket", sock])
        while not os.path.exists(sock):
            time.sleep(0.05)
        conflist = example_conflist(subnet="10.244.1.0/24", socket=sock)
        conflist["plugins"][0]["ipam"]["dataDir"] = os.path.join(work, "ipam")
        conflist["plugins"] = conflist["plugins"][:1]
        rt = Runtime(path=[bin_dir, "/usr/lib/cni"], node_netns=node)
        ips = {}
        for pod in (pod1, pod2):
            result = rt.add_list(conflist, os.path.basename(pod), pod)
            ips[pod] = result["ips"][0]["address"].split("/")[0]
            print(f"pod {os.path.basename(pod)}: {ips[pod]}")
        print(_sh(node, "ip", "-br", "addr"))
        for src, dst in ((pod1, pod2), (pod2, pod1)):
            good = subprocess.run(["nsenter", f"--net={src}", "ping", "-c1", "-W2", ips[dst]],
                                  capture_output=True, check=False).returncode == 0
            ok = ok and good
            print(f"{ips[src]} -> {ips[dst]}: {'ok' if good else 'FAILED'}")
        if keep:
            print(f"kept: namespaces {names}; remove with: ip netns del NAME")
        return 0 if ok else 1
    finally:
        if server:
            server.terminate()
            server.wait()
        if not keep:
            for name in names:
                netns.remove(name)
