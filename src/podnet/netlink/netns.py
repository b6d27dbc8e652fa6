"""Network namespaces: enter one for the calling thread, open netlink sockets bound to one.

setns(2) moves only the calling thread, and a netlink socket stays bound to the namespace it was
created in; so a socket for any namespace can be made from any thread without forking, which
pyroute2's own netns support does.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

from podnet.libc import checked, libc

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from podnet.netlink.fastlink import Rtnl

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0


def setns(fd: int) -> None:
    checked(libc.setns(fd, CLONE_NEWNET), "setns")


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the block with the calling thread in the namespace at `path`."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(target)
        try:
            yield
        finally:
            setns(own)
    finally:
        os.close(target)
        os.close(own)


def iproute_in(path: str | None) -> IPRoute:
    """An IPRoute whose socket lives in the namespace at `path` (None: the thread's own).

    pyroute2 0.9 binds an IPRoute to the thread that made it: use it from that thread only.
    """
    from pyroute2 import IPRoute  # not at import: the plugin's ADD/DEL path does without it

    if path is None:
        return IPRoute(groups=0)
    with entered(path):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                             NETLINK_ROUTE)
    return IPRoute(fileno=sock.detach(), groups=0)


def rtnl_in(path: str | None) -> Rtnl:
    """A raw rtnetlink socket (fastlink) in the namespace at `path` (None: the thread's own)."""
    from podnet.netlink.fastlink import Rtnl

    if path is None:
        return Rtnl()
    with entered(path):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_ROUTE)
    return Rtnl(sock)


NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3)


def is_netns(fd: int) -> bool:
    """Whether an open descriptor is a network namespace (and not a file, a mount or pid
    namespace, a socket): the kernel says what kind of namespace an nsfs file is."""
    import fcntl

    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False


def ns_id(path: str) -> tuple[int, int]:
    """The identity of a namespace: the (device, inode) of its nsfs file."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def read_sysctl(path: str) -> str:
    """A sysctl (`net/ipv4/ip_forward`) of the calling thread's namespace, stripped."""
    with open("/proc/sys/" + path) as fh:
        return fh.read().strip()


def write_sysctl(path: str, value: str) -> None:
    """Write a sysctl (`net/ipv4/ip_forward`) of the calling thread's namespace.

    Slash-separated, since interface names in such paths may hold dots.
    """
    with open("/proc/sys/" + path, "w") as fh:
        fh.write(value)


def ensure_sysctl(path: str, value: str) -> None:
    """A sysctl of the calling thread's namespace set to `value`, written only where it is not:
    in a container /proc/sys is read-only, and a node prepared for Kubernetes has it already."""
    if read_sysctl(path) != value:
        write_sysctl(path, value)


NETNS_DIR = "/var/run/netns"


def create(name: str) -> str:
    """Create a named namespace (as `ip netns add`); its path."""
    from pyroute2 import netns as pr_netns

    pr_netns.create(name)
    return os.path.join(NETNS_DIR, name)


def remove(name: str) -> None:
    """Remove a named namespace; processes still inside are the caller's to stop first."""
    from pyroute2 import netns as pr_netns

    if os.path.exists(os.path.join(NETNS_DIR, name)):
        pr_netns.remove(name)


def listed(prefix: str = "") -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def pids_in(path: str) -> list[int]:
    """Processes whose network namespace is the one at `path`."""
    want = ns_id(path)
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if ns_id(f"/proc/{entry}/ns/net") == want:
                    out.append(int(entry))
            except OSError:
                continue
    return out
