"""The datastore interface the agent and `podnet cluster` use (etcd, or a file for one node)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from podnet.datastore.model import Lease, NetworkConfig


class DatastoreError(Exception):
    """The datastore cannot be reached or refused an operation; the caller may retry."""


class PermissionDenied(DatastoreError):
    """etcd refused these credentials the operation (or the credentials themselves): retrying
    cannot help."""


class LeaseRefused(Exception):
    """A lease that must not be taken (no free subnet, node name already held)."""


@dataclass(frozen=True)
class Event:
    """A change under the lease prefix: `lease` is None for a delete (or a payload rejected)."""

    key: str
    lease: Lease | None
    revision: int
    deleted: bool


@dataclass
class Held:
    """What this agent holds: its lease and the datastore's handle for renewing it."""

    lease: Lease
    lease_id: int
    ttl: int


class Datastore(Protocol):
    def get_config(self) -> NetworkConfig | None: ...

    def put_config(self, config: NetworkConfig) -> None: ...

    def acquire(self, node: str, node_ip: str, attrs: dict[str, object], ttl: int,
                config: NetworkConfig, prefer: Held | None,
                node_ip6: ipaddress.IPv6Address | None = None) -> Held: ...

    def renew(self, held: Held) -> bool:
        """Keep the lease alive; False when it has expired and must be acquired again."""
        ...

    def release(self, held: Held) -> None: ...

    def snapshot(self, config: NetworkConfig) -> tuple[dict[str, Lease], int]:
        """Every valid lease by key, and the revision to watch from."""
        ...

    def watch(self, config: NetworkConfig, revision: int, on_event: Callable[[Event], None],
              stopped: Callable[[], bool]) -> int:
        """Deliver events after `revision`; returns the last revision seen when stopped or idle
        for a while, raises DatastoreError when the store fails."""
        ...

    def publish_pods(self, held: Held, records: dict[str, str]) -> int:
        """Make this node's published pod records `records` (key -> PodRecord JSON), tied to
        its lease; the number of changes made."""
        ...

    def pods(self) -> dict[str, dict[str, str]]:
        """Every node's published pod records: node -> key -> PodRecord JSON."""
        ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...
