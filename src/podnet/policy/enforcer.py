"""The agent's NetworkPolicy enforcement on its node: policies, labels and every node's pods
from the datastore (watched), this node's pods from its own records (at once: the CNI server
calls `local_changed` before it answers an ADD), compiled into the node's table and the fast
path's holds.

Fail closed: the table stays in the kernel when the agent stops, and a new agent replaces it
only once it has read the whole datastore; while etcd is away the last table stays; a new pod
is pending (podnet.policy.pending: nothing forwarded) until it is judged, and starts held off
the fast path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from podnet import podrecords
from podnet.datastore.base import DatastoreError
from podnet.datastore.etcd import PREFIX, EtcdStore
from podnet.firewall import libnft
from podnet.podrecords import PodRecord
from podnet.policy import compile as compiler
from podnet.policy import pending
from podnet.policy.model import IP, Network
from podnet.policy.store import NAMESPACES, POD_META, Objects, pod_identity

log = logging.getLogger("podnet.policy")
DEBOUNCE = 0.02  # seconds a burst of datastore changes is gathered into one table


class Enforcer:
    def __init__(self, store: EtcdStore, node: str, networks: Sequence[Network],
                 records_dir: str, hold: Callable[[set[IP]], int]) -> None:
        """`hold`: the fast path's (FastPath.hold), or a no-op without one."""
        self.store = store
        self.node = node
        self.networks = list(networks)
        self.records_dir = records_dir
        self.hold = hold
        self.objects = Objects()
        self._lock = threading.Lock()  # one compile and apply at a time
        self._dirty = threading.Event()
        self._applied: compiler.Compiled | None = None
        self.applied_total = 0
        self.last_apply_s = 0.0
        self.rules = 0
        # Local pods (namespace, name) whose metadata was read at their ADD.
        self._fetched: set[tuple[str, str]] = set()
        self._released: set[str] = set()  # local pods' addresses out of the pending set
        # Kept open: each new pod's release deletes, and a context closed after a deletion
        # waits for the kernel (libnft.Session), on the path of the pod's ADD.
        self._nft = libnft.Session()

    def start(self, stopping: threading.Event) -> None:
        """Read everything, write the table, then follow the datastore in threads of its
        own. Raises DatastoreError where the first read fails (the caller retries)."""
        pending.ensure()
        revision = self.store.revision(PREFIX)
        self.objects = Objects.read(self.store)
        self.refresh()
        threading.Thread(target=self._watch, args=(revision, stopping), name="policy-watch",
                         daemon=True).start()
        threading.Thread(target=self._worker, args=(stopping,), name="policy",
                         daemon=True).start()

    def local_changed(self) -> None:
        """A pod of this node came or went: judged before the caller goes on, by its labels
        and its namespace's as etcd has them now (the watch may not have brought a change
        made just before the pod's ADD yet); from what is known where etcd does not answer."""
        records = list(podrecords.read_all(self.records_dir).values())
        pods = {pod_identity(r) for r in records}
        self._fetched &= pods
        # Every pod not read yet (one after an ADD; all of them after the agent's restart),
        # in one transaction: one round trip, and one timeout where etcd hangs.
        new = pods - self._fetched
        keys = sorted({k for ns, name in new for k in (f"{POD_META}{ns}/{name}",
                                                       NAMESPACES + ns)})
        if keys:
            try:
                for key, value in zip(keys, self.store.get_many(keys), strict=True):
                    self.objects.update(key, value)
                self._fetched |= new
            except DatastoreError as exc:
                log.warning("policy: judging pods %s by what is known: %s",
                            ", ".join(sorted(f"{ns}/{name}" for ns, name in new)), exc)
        self.refresh(records)

    def refresh(self, records: list[PodRecord] | None = None) -> None:
        """Compile and apply; `records`: this node's pods' records, where the caller has
        read them (else they are read here). This node's pods come from them (current; the
        published ones may lag)."""
        if records is None:
            records = list(podrecords.read_all(self.records_dir).values())
        with self._lock:
            t0 = time.perf_counter()
            local = [self.objects.pod(self.node, r) for r in records]
            cluster = self.objects.cluster(self.objects.published(but=self.node) + local)
            compiled = compiler.compile_node(cluster, local, self.networks)
            if change := compiler.update(self._applied, compiled):
                try:
                    self._nft.run(change)
                except libnft.NftError:
                    self._applied = None  # what is there is unknown now: write it whole
                    raise
                self._applied = compiled
                self.applied_total += 1
            changed = self.hold(compiled.policed)
            # The node's rules hold them now: no longer pending.
            judged = {str(ip) for p in local for ip in p.ips}
            if new := judged - self._released:
                pending.release(new, self._nft.run)
            self._released = judged
            self.rules = compiled.rules
            self.last_apply_s = time.perf_counter() - t0
            if changed:
                log.info("policy: %d pods held on the normal path, %d changed",
                         len(compiled.policed), changed)

    def _worker(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            if not self._dirty.wait(0.5):
                continue
            time.sleep(DEBOUNCE)
            self._dirty.clear()
            try:
                self.refresh()
            except (libnft.NftError, OSError) as exc:
                log.error("policy: cannot apply the rules: %s", exc)
                self._dirty.set()
                stopping.wait(1.0)

    def _on_change(self, key: str, value: str | None, _revision: int) -> None:
        if self.objects.update(key, value):
            self._dirty.set()

    def _watch(self, revision: int, stopping: threading.Event) -> None:
        delay = 0.5
        while not stopping.is_set():
            try:
                revision = self.store.watch_prefix(PREFIX, revision, self._on_change,
                                                   stopping.is_set)
                delay = 0.5
            except DatastoreError as exc:
                # The last table stays; once etcd answers, everything is read again.
                log.warning("policy: %s; keeping the rules in place", exc)
                if stopping.wait(delay):
                    return
                delay = min(delay * 2, 5.0)
                try:
                    revision = self.store.revision(PREFIX)
                    self.objects = Objects.read(self.store)
                    self._dirty.set()
                except DatastoreError:
                    continue
