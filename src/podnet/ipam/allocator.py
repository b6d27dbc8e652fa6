"""Round-robin allocation over a range set, as host-local does it."""

from __future__ import annotations

from collections.abc import Iterator

from podnet.cni.errors import INVALID_NETWORK_CONFIG, IPAM_EXHAUSTED, CNIError
from podnet.ipam.config import IPAddress, Range, RangeSet
from podnet.ipam.store import Store


def candidates(rset: RangeSet, last: IPAddress | None) -> Iterator[tuple[IPAddress, Range]]:
    """Every address of the set once, starting after `last` (round robin), gateways skipped."""
    ranges = rset.ranges
    start_idx, start_ip = 0, ranges[0].start
    if last is not None:
        for i, r in enumerate(ranges):
            if last in r:
                if int(last) < int(r.end):
                    start_idx, start_ip = i, last + 1
                else:
                    start_idx = (i + 1) % len(ranges)
                    start_ip = ranges[start_idx].start
                break
    # One pass from start_ip to the end of its range, the other ranges, then wrap to start_ip.
    order = [(start_idx, start_ip, ranges[start_idx].end)]
    for k in range(1, len(ranges)):
        j = (start_idx + k) % len(ranges)
        order.append((j, ranges[j].start, ranges[j].end))
    if int(start_ip) > int(ranges[start_idx].start):
        order.append((start_idx, ranges[start_idx].start, start_ip - 1))
    for j, lo, hi in order:
        r = ranges[j]
        ip = lo
        while int(ip) <= int(hi):
            if ip != r.gateway:
                yield ip, r
            ip += 1


class Allocator:
    def __init__(self, rset: RangeSet, index: int, store: Store) -> None:
        self.rset, self.index, self.store = rset, index, store

    def get(self, container_id: str, ifname: str, requested: IPAddress | None,
            held: list[IPAddress]) -> tuple[IPAddress, Range]:
        """Reserve an address; the store must be locked. `held`: the attachment's addresses
        in the store (`Store.get_by_id`, read once for every range set)."""
        for ip in held:
            if self.rset.range_for(ip) is not None:
                raise CNIError(INVALID_NETWORK_CONFIG, f"{ip} has been allocated to "
                               f"{container_id}, duplicate allocation is not allowed")
        if requested is not None:
            r = self.rset.range_for(requested)
            if r is None:
                raise CNIError(INVALID_NETWORK_CONFIG,
                               f"requested IP {requested} is not in range set {self.rset}")
            if requested == r.gateway or not self.store.reserve(
                    container_id, ifname, requested, self.index):
                raise CNIError(IPAM_EXHAUSTED, f"requested IP address {requested} is not "
                               f"available in range set {self.rset}")
            return requested, r
        for ip, r in candidates(self.rset, self.store.last_reserved(self.index)):
            if self.store.reserve(container_id, ifname, ip, self.index):
                return ip, r
        raise CNIError(IPAM_EXHAUSTED, f"no IP addresses available in range set: {self.rset}")
