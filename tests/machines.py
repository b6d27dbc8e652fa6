"""Simulated machines, for tests that run an operator's commands verbatim (docs/deploy.md).

A machine is a network namespace on a switch of its own (a bridge in another namespace) and a
mount namespace whose /etc, /opt, /usr/local and /var/lib are overlays on the host's, with
tmpfs on /run/podnet and /run/netns: commands see the host's files, and whatever they write or
mount there stays in the machine and goes with it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

OVERLAID = ("/etc", "/opt", "/usr/local", "/var/lib")
PRIVATE = ("/run/podnet", "/run/netns")


@dataclass
class Machine:
    name: str
    netns: str  # the path of its network namespace
    holder: subprocess.Popen[bytes]  # keeps its mount namespace

    @property
    def mounts(self) -> str:
        return f"/proc/{self.holder.pid}/ns/mnt"

    def run(self, script: str, cwd: str, env: dict[str, str], timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--mount={self.mounts}", f"--net={self.netns}",
                               f"--wd={cwd}", "bash", "-euo", "pipefail", "-c", script],
                              env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def build(make_ns: Callable[[str], str], work: Path, addresses: dict[str, str]
          ) -> dict[str, Machine]:
    """Machines by name, each with eth0 holding its address (a /24) on one switch. Their
    namespaces are make_ns's, so the processes in them go when the test ends."""
    switch = make_ns("switch")
    _sh("nsenter", f"--net={switch}", "ip", "link", "add", "br0", "type", "bridge")
    _sh("nsenter", f"--net={switch}", "ip", "link", "set", "br0", "up")
    machines = {}
    for name, address in addresses.items():
        ns = make_ns(name)
        _sh("nsenter", f"--net={switch}", "ip", "link", "add", name, "type", "veth", "peer",
            "name", "eth0", "netns", ns)
        _sh("nsenter", f"--net={switch}", "ip", "link", "set", name, "master", "br0", "up")
        for cmd in (["link", "set", "lo", "up"], ["link", "set", "eth0", "up"],
                    ["addr", "add", f"{address}/24", "dev", "eth0"]):
            _sh("nsenter", f"--net={ns}", "ip", *cmd)
        root = work / "machines" / name
        mounts = []
        for path in OVERLAID:
            upper, scratch = root / "upper" / path.strip("/"), root / "work" / path.strip("/")
            upper.mkdir(parents=True)
            scratch.mkdir(parents=True)
            mounts.append(f"mount -t overlay overlay -o lowerdir={path},upperdir={upper},"
                          f"workdir={scratch} {path}")
        mounts += [f"mkdir -p {path} && mount -t tmpfs tmpfs {path}" for path in PRIVATE
                   if os.path.isdir(os.path.dirname(path))]
        # In the machine's network namespace too, so that its cleanup stops the holder.
        holder = subprocess.Popen(["nsenter", f"--net={ns}", "unshare", "--mount",
                                   "--propagation", "private", "sh", "-c",
                                   " && ".join(mounts) + " && echo ready && exec sleep infinity"],
                                  stdout=subprocess.PIPE)
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        machines[name] = Machine(name, ns, holder)
    return machines
