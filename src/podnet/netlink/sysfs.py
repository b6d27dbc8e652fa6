"""A network namespace's own sysfs, for the one device setting rtnetlink does not carry:
receive packet steering (RPS).

sysfs shows the devices of the namespace it was mounted in, not of the reader's. The instance
here is made in the calling thread's namespace (fsopen, fsmount) and never attached to a mount
tree: no mount namespace changes, a multi-threaded server can make one per node namespace,
and a device name read or written through it is that namespace's device, never the host's.

Why steering: a veth delivers a packet on the CPU that sent it. A TCP flow's segments are sent
both by the application and by the softirq that takes its ACKs, on two CPUs, and each CPU's
backlog is drained on its own: the receiver gets the flow reordered and the sender
retransmits. A NIC keeps a flow on one receive queue (RSS); RPS does the same for a device
without queues, hashing each flow to one CPU.
"""

from __future__ import annotations

import os

from podnet.libc import checked, libc

# fsopen(2), fsconfig(2), fsmount(2): one number on every architecture (the unified table).
_FSOPEN, _FSCONFIG, _FSMOUNT = 430, 431, 432
_FSOPEN_CLOEXEC, _FSCONFIG_CMD_CREATE, _FSMOUNT_CLOEXEC = 1, 6, 1


def cpu_mask(count: int) -> str:
    """The RPS mask of CPUs 0..count-1, in the kernel's bitmap notation (32-bit words,
    highest first, comma-separated)."""
    bits = (1 << count) - 1
    words = []
    while True:
        words.append(f"{bits & 0xFFFFFFFF:08x}")
        bits >>= 32
        if not bits:
            return ",".join(reversed(words))


def all_cpus() -> str:
    """Every CPU of the machine; steering skips those offline."""
    return cpu_mask(os.cpu_count() or 1)


class Sysfs:
    """The calling thread's network namespace's sysfs, detached."""

    def __init__(self) -> None:
        context = checked(libc.syscall(_FSOPEN, b"sysfs", _FSOPEN_CLOEXEC), "fsopen sysfs")
        try:
            checked(libc.syscall(_FSCONFIG, context, _FSCONFIG_CMD_CREATE, None, None, 0),
                    "fsconfig sysfs")
            self.fd = checked(libc.syscall(_FSMOUNT, context, _FSMOUNT_CLOEXEC, 0),
                              "fsmount sysfs")
        finally:
            os.close(context)

    def close(self) -> None:
        os.close(self.fd)

    def _queues(self, ifname: str) -> list[str]:
        if "/" in ifname or ifname in ("", ".", ".."):
            raise ValueError(f"not an interface name: {ifname!r}")
        base = f"class/net/{ifname}/queues"
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
        try:
            names = os.listdir(fd)
        finally:
            os.close(fd)
        return [f"{base}/{q}/rps_cpus" for q in sorted(names) if q.startswith("rx-")]

    def set_rps(self, ifname: str, mask: str) -> None:
        """Steer what `ifname` receives, every receive queue, over the CPUs of `mask`."""
        for path in self._queues(ifname):
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.fd)
            try:
                os.write(fd, mask.encode())
            finally:
                os.close(fd)

    def rps(self, ifname: str) -> list[int]:
        """Each receive queue's steering mask (0: the receiving CPU does the work)."""
        masks = []
        for path in self._queues(ifname):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
            try:
                masks.append(int(os.read(fd, 4096).decode().strip().replace(",", ""), 16))
            finally:
                os.close(fd)
        return masks
