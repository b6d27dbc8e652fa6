"""`podnet agent`: one per node. Leases the node's pod subnet, learns every peer's lease through
a datastore watch, keeps the backend's kernel state in step (event-driven, with a reconcile loop
against drift), writes the CNI conflist, serves the CNI plugin and keeps the eBPF fast path
attached."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TypeVar

from podnet.agent import conflist
from podnet.agent.metrics import Metrics, serve
from podnet.agent.node import detect
from podnet.agent.state import NodeState, StateFile
from podnet.backends import manager
from podnet.backends.base import Backend
from podnet.cni.server import Server
from podnet.datastore.base import Datastore, DatastoreError, Event, Held
from podnet.datastore.model import Lease, NetworkConfig
from podnet.fastpath import node as fastpath
from podnet.fastpath import podmap
from podnet.firewall import cluster as firewall

log = logging.getLogger("podnet.agent")
T = TypeVar("T")


@dataclass
class AgentOptions:
    node_name: str
    iface: str | None = None
    node_ip: str | None = None
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_socket: str = "/run/podnet/cni.sock"
    ipam_data_dir: str | None = None
    state_dir: str = "/var/lib/podnet/agent"
    ttl: int = 60
    reconcile_interval: float = 10.0
    metrics_addr: str = "127.0.0.1:9153"
    role: str = "node"  # or "router": route every lease, hold none (gateway static mode)


class Agent:
    def __init__(self, opts: AgentOptions, store: Datastore) -> None:
        self.opts = opts
        self.store = store
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # peers and backend calls
        self.peers: dict[str, Lease] = {}  # by datastore key, this node excluded
        self.metrics = Metrics()
        self.store_up = True
        self.state = StateFile(opts.state_dir, opts.node_name)
        self.config: NetworkConfig | None = None
        self.backend: Backend | None = None
        self.held: Held | None = None
        self.cni: Server | None = None
        self.fast: fastpath.FastPath | None = None

    # -- start-up -----------------------------------------------------------------------------
    def start(self) -> None:
        self.state.lock()
        config = self._retry(self.store.get_config, "reading the network config")
        if config is None:
            raise RuntimeError("the cluster is not initialised: run `podnet cluster init` first")
        self.config = config
        node = detect(self.opts.node_name, self.opts.iface, self.opts.node_ip)
        node.state_dir = self.opts.state_dir
        if self.opts.role == "router":
            self.backend = manager.create_router(node, config)
            self._metrics()
            self._start_loops(self._resync())
            log.info("routing the pod subnets of %d nodes", len(self.peers))
            return
        previous = self.state.load()
        if previous.backend and previous.backend != config.backend_type:
            log.info("backend changed from %s to %s: removing what the old one made",
                     previous.backend, config.backend_type)
            manager.cleanup(previous.backend, self.opts.state_dir)
        self.backend = manager.create(node, config)
        attrs = self.backend.setup()
        prefer = previous.held(self.opts.node_name)
        self.held = self._retry(lambda: self.store.acquire(
            self.opts.node_name, str(node.ip), attrs, self.opts.ttl, config, prefer),
            "acquiring a lease")
        own = self.held.lease
        self.state.save(NodeState(self.held.lease_id, str(own.subnet), config.backend_type,
                                  str(node.ip)))
        log.info("leased %s for node %s (%s)", own.subnet, own.node, own.node_ip)
        self.backend.start(own)
        firewall.apply(config.network, [node.ip], self.backend.tunnel_match())
        plugin = self.backend.cni_plugin_options()
        self.fast = self._start_fast_path(config, plugin["bridge"])
        if self.fast is not None:
            plugin["fastPathUplink"] = self.fast.uplink
        path = conflist.write(self.opts.cni_conf_dir, conflist.render(
            plugin, self.backend.pod_mtu(), self.opts.cni_socket, self.opts.ipam_data_dir))
        log.info("wrote %s", path)
        self._metrics()
        revision = self._resync()
        # The socket appearing means ready: peers are programmed. Until then the shim falls back
        # to the plugin in-process, so pods still start.
        self.cni = Server(self.opts.cni_socket)
        self.cni.start_thread()
        self._start_loops(revision)
        threading.Thread(target=self._renew_loop, name="renew", daemon=True).start()

    def _start_fast_path(self, config: NetworkConfig,
                         bridge: str) -> fastpath.FastPath | None:
        assert self.backend is not None
        uplinks = self.backend.fast_path_uplinks()
        if not uplinks or not config.backend.get("fastPath", True):
            fastpath.remove()  # one an earlier config had
            return None
        fast = fastpath.FastPath(bridge, self.backend.pod_mtu(), config.network,
                                 self.backend.switched, self.backend.bridge_links(),
                                 self.backend.fast_path_encap())
        try:
            fast.reconcile(uplinks)
        except Exception as exc:  # an optimisation only: whatever stops it, pods still connect
            log.warning("eBPF fast path unavailable, pods take the normal path: %r", exc)
            return None
        return fast

    def _start_loops(self, revision: int) -> None:
        threading.Thread(target=self._watch_loop, args=(revision,), name="watch",
                         daemon=True).start()
        threading.Thread(target=self._reconcile_loop, name="reconcile", daemon=True).start()

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        delay = 0.5
        while True:
            try:
                return fn()
            except DatastoreError as exc:
                log.warning("%s: %s; retrying", what, exc)
                if self.stopping.wait(delay):
                    raise RuntimeError(f"stopped while {what}") from None
                delay = min(delay * 2, 5.0)

    def _metrics(self) -> None:
        m = self.metrics
        m.gauge("podnet_leases_known", lambda: len(self.peers) + 1,
                "Leases known, this node's included")
        m.gauge("podnet_routes_programmed",
                lambda: self.backend.routes_programmed() if self.backend else 0,
                "Routes the backend has programmed for peers")
        m.gauge("podnet_datastore_up", lambda: 1.0 if self.store_up else 0.0,
                "Whether the datastore answered last time")
        m.gauge("podnet_fast_path_pods", lambda: self.fast.pods() if self.fast else -1.0,
                "Pod addresses on the eBPF fast path (-1: the fast path is off)")
        for name, text in (("podnet_reconcile_runs_total", "Reconcile runs"),
                           ("podnet_reconcile_errors_total", "Reconcile runs that failed"),
                           ("podnet_reconcile_repairs_total", "Kernel entries repaired"),
                           ("podnet_peer_events_total", "Peer lease events handled")):
            m.counter(name, text)
        host, _, port = self.opts.metrics_addr.rpartition(":")
        if port and int(port):
            serve(m, lambda: self.store_up and not self.stopping.is_set(), host or "127.0.0.1",
                  int(port))

    # -- peers --------------------------------------------------------------------------------
    def _resync(self) -> int:
        assert self.config is not None and self.backend is not None
        t0 = time.perf_counter()
        leases, revision = self.store.snapshot(self.config)
        own = self.held.lease if self.held else None
        t1 = time.perf_counter()
        with self.lock:
            self.peers = {k: v for k, v in leases.items()
                          if own is None or v.node != own.node}
            self.backend.sync(list(self.peers.values()))
            self._sync_tunnels()
            t2 = time.perf_counter()
            firewall.apply(self.config.network,
                           [p.node_ip for p in self.peers.values()]
                           + ([own.node_ip] if own else []), self.backend.tunnel_match())
        log.info("synced %d peers at revision %d (read %.0f ms, kernel %.0f ms, firewall "
                 "%.0f ms)", len(self.peers), revision, (t1 - t0) * 1e3, (t2 - t1) * 1e3,
                 (time.perf_counter() - t2) * 1e3)
        return revision

    def _sync_tunnels(self) -> int:
        """The fast path's tunnel map after the backend's entries (all peers)."""
        assert self.backend is not None
        if self.fast is None:
            return 0
        want = {p.subnet: t for p in self.peers.values()
                if (t := self.backend.fast_path_tunnel(p)) is not None}
        return self.fast.set_tunnels(want)

    def _set_tunnel(self, subnet: ipaddress.IPv4Network, peer: podmap.Peer | None) -> None:
        """One peer's tunnel map entry (a lease event's); None: none."""
        if self.fast is not None:
            self.fast.set_tunnel(subnet, peer)

    def _on_event(self, ev: Event) -> None:
        assert self.backend is not None
        self.metrics.inc("podnet_peer_events_total")
        own = self.held.lease if self.held else None
        with self.lock:
            if ev.deleted:
                gone = self.peers.pop(ev.key, None)
                if gone is not None:
                    log.info("peer %s left (%s)", gone.node, gone.subnet)
                    self.backend.peer_removed(gone.node)
                    self._set_tunnel(gone.subnet, None)
                    firewall.remove_node(gone.node_ip)
                return
            lease = ev.lease
            if lease is None or (own is not None and lease.node == own.node):
                return
            # A node that moved to another subnet key: drop its old entry first.
            for key, old in list(self.peers.items()):
                if old.node == lease.node and key != ev.key:
                    del self.peers[key]
                    self._set_tunnel(old.subnet, None)
            self.peers[ev.key] = lease
            self.backend.peer_added(lease)
            self._set_tunnel(lease.subnet, self.backend.fast_path_tunnel(lease))
            firewall.add_node(lease.node_ip)
            log.info("peer %s at %s has %s", lease.node, lease.node_ip, lease.subnet)

    def _watch_loop(self, revision: int | None) -> None:
        assert self.config is not None
        delay = 0.5
        while not self.stopping.is_set():
            try:
                if revision is None:
                    revision = self._resync()
                revision = self.store.watch(self.config, revision, self._on_event,
                                            self.stopping.is_set)
                self.store_up = True
                delay = 0.5
            except DatastoreError as exc:
                # Keep the data plane as it is; resync once the datastore is back.
                if self.store_up:
                    log.warning("datastore lost: %s; keeping the data plane, retrying", exc)
                self.store_up = False
                revision = None
                self.stopping.wait(delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                log.exception("watch loop error")
                revision = None
                self.stopping.wait(delay)

    def _renew_loop(self) -> None:
        assert self.held is not None and self.config is not None
        while not self.stopping.wait(max(1.0, self.opts.ttl / 3)):
            try:
                if not self.store.renew(self.held):
                    log.warning("lease expired: acquiring it again")
                    assert self.backend is not None
                    held = self.held
                    self.held = self.store.acquire(
                        self.opts.node_name, str(held.lease.node_ip), held.lease.attrs,
                        self.opts.ttl, self.config, held)
                    self.state.save(NodeState(self.held.lease_id, str(self.held.lease.subnet),
                                              self.config.backend_type,
                                              str(self.held.lease.node_ip)))
                self.store_up = True
            except DatastoreError as exc:
                self.store_up = False
                log.warning("lease renewal failed: %s", exc)
            except Exception:
                log.exception("lease renewal error")

    def _reconcile_loop(self) -> None:
        while not self.stopping.wait(self.opts.reconcile_interval):
            self.reconcile()

    def reconcile(self) -> None:
        assert self.backend is not None
        self.metrics.inc("podnet_reconcile_runs_total")
        try:
            with self.lock:
                remade = self.backend.repair_devices()
                repaired = self.backend.sync(list(self.peers.values())) + remade
                if self.fast is not None:
                    repaired += self.fast.reconcile(self.backend.fast_path_uplinks())
                    repaired += self._sync_tunnels()
            if self.config is not None:
                # Other software may have set a FORWARD policy of DROP since the last run.
                firewall.open_foreign_forward(self.config.network)
            if repaired:
                log.warning("reconcile repaired %d kernel entries", repaired)
                self.metrics.inc("podnet_reconcile_repairs_total", repaired)
        except Exception:
            self.metrics.inc("podnet_reconcile_errors_total")
            log.exception("reconcile failed")

    # -- shutdown -----------------------------------------------------------------------------
    def stop(self) -> None:
        self.stopping.set()
        if self.cni is not None:
            self.cni.stop()
        with contextlib.suppress(Exception):
            self.store.close()
        self.state.unlock()

    def run_forever(self) -> None:
        def _term(_sig: int, _frame: FrameType | None) -> None:
            self.stopping.set()

        signal.signal(signal.SIGTERM, _term)
        signal.signal(signal.SIGINT, _term)
        self.start()
        while not self.stopping.wait(1.0):
            pass
        log.info("shutting down; the data plane stays as it is")
        self.stop()


def leave(opts: AgentOptions, store: Datastore) -> None:
    """Free this node's lease and remove what podnet programmed on it."""
    state = StateFile(opts.state_dir, opts.node_name)
    previous = state.load()
    config = store.get_config()
    held = previous.held(opts.node_name)
    if held is not None and config is not None:
        with contextlib.suppress(DatastoreError):
            store.release(held)
    if previous.backend:
        manager.cleanup(previous.backend, opts.state_dir)
    firewall.remove()
    with contextlib.suppress(FileNotFoundError):
        os.remove(state.path)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(opts.cni_conf_dir, conflist.FILENAME))

