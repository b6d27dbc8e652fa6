"""Where a plugin acts: the node's ("host") namespace and the pod's.

In-process, the host is the plugin process's own namespace. In the cni-server, the host is the
namespace of the plugin process that called, and the server's worker thread enters it.
ADD and DEL use raw rtnetlink (`fast`); pyroute2 (`host`) is made only when needed (CHECK, a
bridge to create), so the in-process plugin does not pay its import on every pod.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from podnet.cni.errors import UNKNOWN_CONTAINER, CNIError
from podnet.firewall import libnft
from podnet.netlink import netns
from podnet.netlink.fastlink import Rtnl
from podnet.netlink.sysfs import Sysfs

if TYPE_CHECKING:
    from pyroute2 import IPRoute

T = TypeVar("T")


class HostContext:
    def __init__(self, host_ns: str | None = None) -> None:
        self.host_ns = host_ns
        self._fast: Rtnl | None = None
        self._host: IPRoute | None = None
        self._nft: libnft.Session | None = None
        self._sysfs: Sysfs | None = None

    @property
    def fast(self) -> Rtnl:
        if self._fast is None:
            self._fast = netns.rtnl_in(self.host_ns)
        return self._fast

    @property
    def host(self) -> IPRoute:
        if self._host is None:
            self._host = netns.iproute_in(self.host_ns)
        return self._host

    @property
    def nft(self) -> libnft.Session:
        """Kept open with the context: a DEL deletes the pod's rules, and a context closed
        after a deletion waits for the kernel (libnft.Session)."""
        if self._nft is None:
            with self.in_host():
                self._nft = libnft.Session()
        return self._nft

    @property
    def sysfs(self) -> Sysfs:
        """The host namespace's sysfs (its devices' steering), kept with the context."""
        if self._sysfs is None:
            with self.in_host():
                self._sysfs = Sysfs()
        return self._sysfs

    def close(self) -> None:
        if self._sysfs is not None:
            self._sysfs.close()
        if self._nft is not None:
            self._nft.close()
        if self._fast is not None:
            self._fast.close()
        if self._host is not None:
            self._host.close()

    @contextlib.contextmanager
    def in_host(self) -> Iterator[None]:
        """The calling thread in the host namespace (for /proc/sys and nftables)."""
        if self.host_ns is None:
            yield
        else:
            with netns.entered(self.host_ns):
                yield

    def ensure_sysctl(self, path: str, value: str) -> None:
        with self.in_host():
            netns.ensure_sysctl(path, value)

    @contextlib.contextmanager
    def pod_fd(self, path: str) -> Iterator[int]:
        """An open fd of the pod's namespace; error 3 if it does not exist."""
        if not path:
            raise CNIError(UNKNOWN_CONTAINER, "the pod's network namespace does not exist")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise CNIError(UNKNOWN_CONTAINER, f"network namespace {path}: "
                           f"{exc.strerror}") from None
        try:
            yield fd
        finally:
            os.close(fd)

    def pod_fast(self, path: str) -> contextlib.closing[Rtnl]:
        """A raw rtnetlink socket in the pod's namespace; error 3 if it does not exist."""
        return contextlib.closing(_in_pod(path, netns.rtnl_in))

    def pod(self, path: str) -> contextlib.closing[IPRoute]:
        """A pyroute2 socket in the pod's namespace (CHECK); error 3 if it does not exist."""
        return contextlib.closing(_in_pod(path, netns.iproute_in))


def _in_pod(path: str, make: Callable[[str], T]) -> T:
    if not path or not os.path.exists(path):
        raise CNIError(UNKNOWN_CONTAINER, f"network namespace {path} does not exist" if path
                       else "the pod's network namespace does not exist")
    try:
        return make(path)
    except OSError as exc:
        raise CNIError(UNKNOWN_CONTAINER, f"cannot enter network namespace {path}: "
                       f"{exc.strerror}") from None


@contextlib.contextmanager
def local() -> Iterator[HostContext]:
    """The context of a plugin acting in its own process."""
    ctx = HostContext()
    try:
        yield ctx
    finally:
        ctx.close()
