"""GRE: where the kernel has ip_gre. The machines this project runs on lack it, so the backend
checks first and refuses with a clear error; see docs/backends.md for kernels that work."""

from __future__ import annotations

import os

from podnet.backends.base import Backend, BackendError, Entry
from podnet.datastore.model import Lease


def kernel_has_gre() -> bool:
    # Built in or loaded, the kernel lists the fallback device's module or /proc entry.
    return os.path.exists("/sys/module/ip_gre") or os.path.exists("/proc/sys/net/ipv4/conf/gre0")


class GreBackend(Backend):
    name = "gre"

    def pod_mtu(self) -> int:
        return self.node.mtu - 24  # outer IPv4 20 + GRE 4

    def setup(self) -> dict[str, object]:
        if not kernel_has_gre():
            raise BackendError("the gre backend needs the kernel's ip_gre module, which this "
                               "kernel lacks (no /sys/module/ip_gre); use the vxlan backend")
        raise BackendError("the gre backend is not implemented beyond its kernel check yet")

    def entries_for(self, peer: Lease) -> frozenset[Entry]:
        return frozenset()
