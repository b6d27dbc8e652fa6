"""What the agent keeps on the node between runs: its lease (to keep its subnet across
restarts) and which backend programmed the node (to clean up after a backend change). The file
is root-only; a lock held for the agent's life stops a second agent with the same name."""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass

from podnet.datastore.base import Held
from podnet.datastore.model import Lease
from podnet.fsutil import write_atomic


class AlreadyRunning(Exception):
    pass


@dataclass
class NodeState:
    lease_id: int = 0
    subnet: str = ""
    backend: str = ""
    node_ip: str = ""

    def held(self, node: str) -> Held | None:
        if not self.subnet:
            return None
        lease = Lease(ipaddress.ip_network(self.subnet), node,
                      ipaddress.ip_address(self.node_ip or "0.0.0.0"))
        return Held(lease, self.lease_id, 0)


def file_stem(node: str) -> str:
    """The node's name as a file name: a Kubernetes node name may have 253 characters and a
    file name 255 bytes, so a long one keeps its head and gains a digest of the whole."""
    if len(node) <= 200:
        return node
    return f"{node[:183]}-{hashlib.sha256(node.encode()).hexdigest()[:16]}"


class StateFile:
    def __init__(self, state_dir: str, node: str) -> None:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        stem = file_stem(node)
        self.path = os.path.join(state_dir, f"{stem}.json")
        self._lock_fd = -1
        self._lock_path = os.path.join(state_dir, f"{stem}.lock")

    def lock(self) -> None:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(f"another agent runs for this node (lock {self._lock_path})"
                                 ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def load(self) -> NodeState:
        try:
            with open(self.path) as fh:
                obj = json.load(fh)
            return NodeState(int(obj.get("leaseID", 0)), str(obj.get("subnet", "")),
                             str(obj.get("backend", "")), str(obj.get("nodeIP", "")))
        except (OSError, ValueError, TypeError):
            return NodeState()

    def save(self, state: NodeState) -> None:
        write_atomic(self.path, json.dumps({"leaseID": state.lease_id, "subnet": state.subnet,
                                            "backend": state.backend, "nodeIP": state.node_ip}),
                     0o600)
