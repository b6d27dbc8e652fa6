"""Where a plugin acts: the node's ("host") namespace and the pod's.

In-process, the host is the plugin process's own namespace. In the cni-server, the host is the
namespace of the plugin process that called, and the server's worker thread enters it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from pyroute2 import IPRoute

from podnet.cni.errors import UNKNOWN_CONTAINER, CNIError
from podnet.netlink import netns


class HostContext:
    def __init__(self, host: IPRoute, host_ns: str | None = None) -> None:
        self.host = host
        self.host_ns = host_ns

    @contextlib.contextmanager
    def in_host(self) -> Iterator[None]:
        """The calling thread in the host namespace (for /proc/sys)."""
        if self.host_ns is None:
            yield
        else:
            with netns.entered(self.host_ns):
                yield

    def write_sysctl(self, path: str, value: str) -> None:
        with self.in_host():
            netns.write_sysctl(path, value)

    @contextlib.contextmanager
    def pod(self, path: str) -> Iterator[IPRoute]:
        """A netlink socket in the pod's namespace; error 3 if it does not exist."""
        if not os.path.exists(path):
            raise CNIError(UNKNOWN_CONTAINER, f"network namespace {path} does not exist")
        try:
            ipr = netns.iproute_in(path)
        except OSError as exc:
            raise CNIError(UNKNOWN_CONTAINER, f"cannot enter network namespace {path}: "
                           f"{exc.strerror}") from None
        try:
            yield ipr
        finally:
            ipr.close()


@contextlib.contextmanager
def local() -> Iterator[HostContext]:
    """The context of a plugin acting in its own process."""
    ipr = IPRoute(groups=0)
    try:
        yield HostContext(ipr)
    finally:
        ipr.close()
