"""`podnet agent`: one per node. Leases the node's pod subnet, learns every peer's lease through
a datastore watch, keeps the backend's kernel state in step (event-driven, with a reconcile loop
against drift), writes the CNI conflist, serves the CNI plugin and keeps the eBPF fast path
attached."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

from podnet import podrecords
from podnet.agent import conflist
from podnet.agent.hostlock import HostBusy, HostLock, holder
from podnet.agent.metrics import Metrics, serve
from podnet.agent.node import detect
from podnet.agent.options import AgentOptions, metrics_address
from podnet.agent.state import AlreadyRunning, NodeState, StateFile
from podnet.backends import manager
from podnet.backends.base import Backend, BackendError
from podnet.datastore.base import Datastore, DatastoreError, Event, Held, PermissionDenied
from podnet.datastore.model import (
    ConfigError,
    Lease,
    NetworkConfig,
    NewerFormat,
    NodeIP,
    node_ip_problem,
)
from podnet.errors import UserError
from podnet.firewall import cluster as firewall
from podnet.firewall import nft
from podnet.firewall.libnft import NftError
from podnet.netlink import links, netns

if TYPE_CHECKING:  # imported where first used: the peers' routes come before them
    from podnet.cni.server import Server
    from podnet.fastpath import node as fastpath
    from podnet.fastpath import podmap
    from podnet.policy.enforcer import Enforcer

log = logging.getLogger("podnet.agent")
T = TypeVar("T")
PODS_REFRESH = 30.0
EXIT_CONFIG_CHANGED = 3  # the cluster's config changed: the supervisor starts us with it


class Agent:
    def __init__(self, opts: AgentOptions, store: Datastore) -> None:
        self.opts = opts
        self.store = store
        self.stopping = threading.Event()
        self.pods_changed = threading.Event()
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
        self.enforcer: Enforcer | None = None
        self.host = HostLock(opts.node_name)
        self.store_down_since: float | None = None
        self.exit_code = 0

    # -- start-up -----------------------------------------------------------------------------
    def start(self) -> None:
        """Everything a user can get wrong is refused before the lease, the kernel or the
        conflist are touched: the host's other agent, the metrics port, the node IP."""
        try:
            self.host.acquire()
        except HostBusy as exc:
            raise UserError(str(exc), "stop it first; one agent serves a host") from None
        try:
            self.state.lock()
        except AlreadyRunning as exc:
            raise UserError(str(exc), "stop the other agent of this node first") from None
        self._metrics()
        try:
            config = self._retry(self.store.get_config, "reading the network config")
        except NewerFormat as exc:
            raise UserError(str(exc), "upgrade this node's podnet to the cluster's") from None
        if config is None:
            raise UserError("the cluster is not initialised",
                            "run `podnet cluster init` against this datastore first")
        self.config = config
        node = detect(self.opts.node_name, self.opts.iface, self.opts.node_ip)
        node.state_dir = self.opts.state_dir
        for ip, second in ((node.ip, False), (node.ip6, True)):
            if ip is not None and (problem := node_ip_problem(ip, config, second)) is not None:
                raise UserError(problem, "give --iface or --node-ip the node's underlay "
                                "address")
        _forwarding()
        # The peers' leases are read while this node takes its own and sets up its backend
        # (the watch starts from this read's revision, so nothing written meanwhile is
        # missed; this node's own lease comes as an event and is skipped as its own).
        reading = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peers")
        peers = reading.submit(self.store.snapshot, config).result
        reading.shutdown(wait=False)
        if self.opts.role == "router":
            self.backend = manager.create_router(node, config)
            self._start_loops(self._resync(read=peers))
            log.info("routing the pod subnets of %d nodes", len(self.peers))
            return
        previous = self.state.load()
        if previous.backend and previous.backend != config.backend_type:
            log.info("backend changed from %s to %s: removing what the old one made",
                     previous.backend, config.backend_type)
            manager.cleanup(previous.backend, self.opts.state_dir)
        try:
            self.backend = manager.create(node, config)
            attrs = self.backend.setup()
        except BackendError as exc:  # before any lease: nothing is stored
            raise UserError.of(str(exc), "see docs/backends.md") from None
        prefer = previous.held(self.opts.node_name)
        self.held = self._retry(lambda: self.store.acquire(
            self.opts.node_name, str(node.ip), attrs, self.opts.ttl, config, prefer, node.ip6),
            "acquiring a lease")
        own = self.held.lease
        self.state.save(NodeState(self.held.lease_id, str(own.subnet), config.backend_type,
                                  str(node.ip)))
        log.info("leased %s for node %s (%s)", own.subnet, own.node, own.node_ip)
        self.backend.start(own)
        plugin = self.backend.cni_plugin_options()
        # The fast path (a program to load) and policy (the datastore to read) are made
        # once the peers' routes are programmed, before the tunnel map and the firewall,
        # which need them: the peers are reachable the sooner.
        def fast_and_policy() -> None:
            self.fast = self._start_fast_path(config, plugin["bridge"])
            self.enforcer = self._start_policy(config, own)

        revision = self._resync(fast_and_policy, peers)
        if self.fast is not None:
            plugin["fastPathUplink"] = self.fast.uplink
        plugin["podRecords"] = self.opts.pod_records
        plugin["policy"] = self.enforcer is not None
        plugin["receiveSteering"] = self.opts.receive_steering
        path = conflist.write(self.opts.cni_conf_dir, conflist.render(
            plugin, self.backend.pod_mtu(), self.opts.cni_socket, self.opts.ipam_data_dir))
        log.info("wrote %s", path)
        # The socket appearing means ready: peers are programmed. Until then the shim falls back
        # to the plugin in-process, so pods still start.
        from podnet.cni.server import Server

        self.cni = Server(self.opts.cni_socket, judge=self._judge_local_pods,
                          on_change=self.pods_changed.set)
        self.cni.start_thread()
        self._start_loops(revision)
        threading.Thread(target=self._renew_loop, name="renew", daemon=True).start()
        threading.Thread(target=self._pods_loop, name="pods", daemon=True).start()
        self._start_responder()

    def _start_responder(self) -> None:
        """Answer `podnet verify --etcd` (a file store has no one to ask)."""
        from podnet.datastore.etcd import EtcdStore
        from podnet.verify.responder import Local, Responder

        if isinstance(self.store, EtcdStore):
            assert self.backend is not None
            assert self.held is not None
            lease = self.held.lease
            local = Local(self.opts.node_name,
                          {s.version: str(lease.address(s.version)) for s in lease.subnets},
                          self.opts.pod_records, self.backend.pod_mtu(), self.lacks,
                          self._lease_id)
            Responder(self.store, local, self.stopping).start()

    def _lease_id(self) -> int:
        assert self.held is not None
        return self.held.lease_id

    def lacks(self) -> dict[str, list[str]]:
        """What this node lacks towards each peer's pods (for verify's diagnosis)."""
        from podnet.verify.diagnose import NodeTables, node_lacks

        assert self.config is not None
        with self.lock:
            peers = list(self.peers.values())
        tables = NodeTables.dump(None)  # once for every peer
        return {p.node: [why for subnet in p.subnets for why in node_lacks(
            tables, self.config.backend_type, self.opts.node_name, p.node, subnet,
            str(p.node_ip))] for p in peers}

    def _pods_loop(self) -> None:
        """Publish the node's pod records: when the plugin changed them (the directory's
        mtime), when the lease changed (they live on it), and every PODS_REFRESH seconds."""
        published: tuple[int, int] | None = None
        refresh = 0.0
        while not self.stopping.is_set():
            # A pod the server wired wakes this at once; the plugin run in-process (no server
            # yet) within a second.
            self.pods_changed.wait(1.0)
            self.pods_changed.clear()
            assert self.held is not None
            try:
                mtime = os.stat(self.opts.pod_records).st_mtime_ns
            except FileNotFoundError:
                mtime = 0
            mark = (mtime, self.held.lease_id)
            if mark == published and time.monotonic() < refresh:
                continue
            records = {k: r.to_json() for k, r in podrecords.read_all(
                self.opts.pod_records).items()}
            try:
                if changed := self.store.publish_pods(self.held, records):
                    log.info("published %d pod records (%d changes)", len(records), changed)
                published, refresh = mark, time.monotonic() + PODS_REFRESH
            except DatastoreError as exc:
                log.debug("publishing pod records: %s", exc)  # the watch loop reports it

    def _start_fast_path(self, config: NetworkConfig,
                         bridge: str) -> fastpath.FastPath | None:
        from podnet.fastpath import node as fastpath

        assert self.backend is not None
        spec = self.backend.fast_path()
        if not spec.uplinks or not config.backend.get("fastPath", True):
            fastpath.remove()  # one an earlier config had
            return None
        net = config.network
        v4 = net if isinstance(net, ipaddress.IPv4Network) else None
        v6 = net if isinstance(net, ipaddress.IPv6Network) else config.network6
        fast = fastpath.FastPath(bridge, self.backend.pod_mtu(), v4, self.backend.switched,
                                 spec.bridge_links, spec.encap, v6)
        try:
            fast.reconcile(spec.uplinks)
        except Exception as exc:  # an optimisation only: whatever stops it, pods still connect
            log.warning("eBPF fast path unavailable, pods take the normal path: %r", exc)
            return None
        return fast

    def _start_policy(self, config: NetworkConfig, own: Lease) -> Enforcer | None:
        """NetworkPolicy enforcement, where policies can be had (etcd; a file store's single
        node has none)."""
        from podnet.datastore.etcd import EtcdStore
        from podnet.policy.enforcer import Enforcer

        if not isinstance(self.store, EtcdStore):
            return None
        fast = self.fast
        enforcer = Enforcer(self.store, own.node, config.networks, self.opts.pod_records,
                            fast.hold if fast is not None else lambda _held: 0)
        self._retry(lambda: enforcer.start(self.stopping), "reading policies")
        return enforcer

    def _judge_local_pods(self) -> None:
        """The CNI server's ADD or DEL, before it answers: the pod is judged by policy now
        (should that fail it stays unknown, so dropped); its record is published after."""
        if self.enforcer is not None:
            try:
                self.enforcer.local_changed()
            except (NftError, OSError) as exc:
                log.error("policy: cannot judge the node's pods: %s", exc)

    def _start_loops(self, revision: int) -> None:
        threading.Thread(target=self._watch_loop, args=(revision,), name="watch",
                         daemon=True).start()
        threading.Thread(target=self._reconcile_loop, name="reconcile", daemon=True).start()

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        delay = 0.5
        while True:
            try:
                return fn()
            except PermissionDenied as exc:
                raise UserError(f"{what}: {exc}", "give this node's etcd credentials "
                                "(`podnet cluster credentials` makes them)") from None
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
        host, port = metrics_address(self.opts.metrics_addr)
        if port:
            try:
                serve(m, self.problems, host, port)
            except OSError as exc:
                raise UserError(f"cannot serve metrics on {self.opts.metrics_addr}: "
                                f"{exc.strerror}", "free the port, choose another with "
                                "--metrics, or turn metrics off with port 0") from None

    def problems(self) -> list[str]:
        """Why this node cannot wire pods now (what /healthz answers); empty when it can."""
        out = []
        if self.stopping.is_set():
            out.append("the agent is stopping")
        if self.opts.role == "node":
            if self.backend is None:
                out.append("starting: no lease yet")
            elif (why := self.backend.bridge_problem()) is not None:
                out.append(why)
        since = self.store_down_since
        if since is not None and time.monotonic() - since > self.opts.ttl:
            out.append(f"the datastore has been unreachable for {time.monotonic() - since:.0f} "
                       f"s, longer than the lease TTL ({self.opts.ttl} s)")
        return out

    def _firewall(self, node_ips: list[NodeIP]) -> None:
        """The agent's tables, for the cluster's networks and these nodes."""
        assert self.config is not None and self.backend is not None
        firewall.apply(self.config.networks, node_ips, self.backend.node.ip.version,
                       self.backend.tunnel_match(), self.config.backend.get("ipv6Masquerade"),
                       notrack=self.enforcer is None)

    def _store_state(self, up: bool) -> None:
        self.store_up = up
        if up:
            self.store_down_since = None
        elif self.store_down_since is None:
            self.store_down_since = time.monotonic()

    # -- peers --------------------------------------------------------------------------------
    def _resync(self, set_up: Callable[[], None] | None = None,
                read: Callable[[], tuple[dict[str, Lease], int]] | None = None) -> int:
        """Every peer programmed from a fresh read (or the start's, `read`, made earlier);
        `set_up` (the start's) run between the routes and what needs the fast path and
        policy: the tunnel map and the firewall (written with every peer at once: with this
        node alone, it would drop the peers' tunnel packets until then)."""
        assert self.config is not None and self.backend is not None
        t0 = time.perf_counter()
        leases, revision = None, 0
        if read is not None:
            with contextlib.suppress(DatastoreError):  # read again below
                leases, revision = read()
        if leases is None:
            leases, revision = self.store.snapshot(self.config)
        own = self.held.lease if self.held else None
        t1 = time.perf_counter()
        with self.lock:
            self.peers = {k: v for k, v in leases.items()
                          if own is None or v.node != own.node}
            self.backend.sync(list(self.peers.values()))
            t2 = time.perf_counter()
            if set_up is not None:
                set_up()
            self._sync_tunnels()
            self._firewall([ip for p in [*self.peers.values(), *([own] if own else [])]
                            for ip in p.underlay_ips])
        log.info("synced %d peers at revision %d (read %.0f ms, kernel %.0f ms, then tunnels "
                 "and firewall %.0f ms)", len(self.peers), revision, (t1 - t0) * 1e3,
                 (t2 - t1) * 1e3, (time.perf_counter() - t2) * 1e3)
        return revision

    def _sync_tunnels(self) -> int:
        """The fast path's tunnel map after the backend's entries (all peers)."""
        assert self.backend is not None
        if self.fast is None:
            return 0
        want = {s: t for p in self.peers.values()
                if (t := self.backend.fast_path_tunnel(p)) is not None for s in p.subnets}
        return self.fast.set_tunnels(want)

    def _set_tunnel(self, lease: Lease, peer: podmap.Peer | None) -> None:
        """A peer's tunnel map entries, one per subnet (a lease event's); None: none."""
        if self.fast is not None:
            for subnet in lease.subnets:
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
                    self._set_tunnel(gone, None)
                    for ip in gone.underlay_ips:
                        firewall.remove_node(ip)
                return
            lease = ev.lease
            if lease is None or (own is not None and lease.node == own.node):
                return
            # A node that moved to another subnet key: drop its old entry first.
            for key, old in list(self.peers.items()):
                if old.node == lease.node and key != ev.key:
                    del self.peers[key]
                    self._set_tunnel(old, None)
            self.peers[ev.key] = lease
            self.backend.peer_added(lease)
            self._set_tunnel(lease, self.backend.fast_path_tunnel(lease))
            for ip in lease.underlay_ips:
                firewall.add_node(ip)
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
                self._store_state(True)
                delay = 0.5
            except DatastoreError as exc:
                # Keep the data plane as it is; resync once the datastore is back.
                if self.store_up:
                    log.warning("datastore lost: %s; keeping the data plane, retrying", exc)
                self._store_state(False)
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
                        self.opts.ttl, self.config, held, held.lease.node_ip6)
                    self.state.save(NodeState(self.held.lease_id, str(self.held.lease.subnet),
                                              self.config.backend_type,
                                              str(self.held.lease.node_ip)))
                self._store_state(True)
            except DatastoreError as exc:
                self._store_state(False)
                log.warning("lease renewal failed: %s", exc)
            except Exception:
                log.exception("lease renewal error")

    def _reconcile_loop(self) -> None:
        while not self.stopping.wait(self.opts.reconcile_interval):
            if self._config_changed():
                return
            self.reconcile()

    def _config_changed(self) -> bool:
        """Whether the cluster's config is no longer the one this agent runs; if so, the agent
        stops with EXIT_CONFIG_CHANGED so that its supervisor (systemd, the DaemonSet) starts
        it again with the new one, rather than running on a stale config."""
        try:
            current: NetworkConfig | None = self.store.get_config()
            why = "" if current is None else describe_change(self.config, current)
        except DatastoreError:
            return False  # unreachable: the watch loop reports it
        except ConfigError as exc:
            current, why = None, f" ({exc})"
        if current == self.config:
            return False
        what = "changed" if current is not None else "is invalid" if why else "was removed"
        log.error("the cluster's network config %s%s: exiting (status %d) to start again "
                  "with it; the data plane stays until then", what, why, EXIT_CONFIG_CHANGED)
        self.exit_code = EXIT_CONFIG_CHANGED
        self.stopping.set()
        return True

    def reconcile(self) -> None:
        assert self.backend is not None
        self.metrics.inc("podnet_reconcile_runs_total")
        try:
            with self.lock:
                remade = self.backend.repair_devices()
                repaired = self.backend.sync(list(self.peers.values())) + remade
                if self.fast is not None:
                    repaired += self.fast.reconcile(self.backend.fast_path().uplinks)
                    repaired += self._sync_tunnels()
            if self.config is not None:
                # Other software may have set a FORWARD policy of DROP since the last run.
                for network in self.config.networks:
                    firewall.open_foreign_forward(network)
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
        self.host.release()

    def run_forever(self) -> int:
        """Run until SIGTERM or SIGINT (or a config change); the exit status."""
        def _term(_sig: int, _frame: FrameType | None) -> None:
            self.stopping.set()

        signal.signal(signal.SIGTERM, _term)
        signal.signal(signal.SIGINT, _term)
        try:
            self.start()
            while not self.stopping.wait(1.0):
                pass
            log.info("shutting down; the data plane stays as it is")
        finally:
            self.stop()
        return self.exit_code


def _forwarding() -> None:
    """The node forwards IPv4 (pods' packets to and from other nodes) or can be made to; in
    a container /proc/sys is read-only, and the node must have it on already."""
    try:
        netns.ensure_sysctl("net/ipv4/ip_forward", "1")
    except OSError as exc:
        raise UserError(f"net.ipv4.ip_forward is 0 and the agent cannot set it "
                        f"({exc.strerror})",
                        "set it on the node, as kubeadm requires: sysctl -w "
                        "net.ipv4.ip_forward=1") from None


def describe_change(old: NetworkConfig | None, new: NetworkConfig) -> str:
    """What differs between two configs, for the log (' (network a -> b, ...)')."""
    if old is None:
        return ""
    parts = [f"{what} {a} -> {b}" for what, a, b in (
        ("network", old.network, new.network), ("subnet length", old.subnet_len,
                                                 new.subnet_len),
        ("IPv6 network", old.network6, new.network6),
        ("IPv6 subnet length", old.subnet_len6, new.subnet_len6),
        ("backend", old.backend_type, new.backend_type)) if a != b]
    if not parts and old.backend != new.backend:
        parts.append(f"backend options {old.backend} -> {new.backend}")
    return f" ({', '.join(parts)})" if parts else ""


def leave(opts: AgentOptions, store: Datastore) -> list[str]:
    """Free this node's lease and remove everything the agent made on the node: the backend's
    devices and routes, the pod bridge (with its address and route), podnet's nftables tables,
    the fast path, the CNI socket, the conflist and the state file. Refused while an agent
    runs here. Returns warnings for what could not be done."""
    from podnet.policy import compile as policy_compile
    from podnet.policy import pending

    running = holder()
    if running is not None:
        raise UserError(f"an agent runs on this host (node {running[0]!r}, pid {running[1]})",
                        "stop it before --leave")
    state = StateFile(opts.state_dir, opts.node_name)
    try:
        state.lock()
    except AlreadyRunning as exc:
        raise UserError(str(exc), "stop that agent before --leave") from None
    warnings = []
    try:
        previous = state.load()
        held = previous.held(opts.node_name)
        if held is not None:
            try:
                store.release(held)
            except DatastoreError as exc:
                warnings.append(f"the lease of {held.lease.subnet} was not released ({exc}); "
                                "it expires after its TTL")
        bridge = _conflist_bridge(opts.cni_conf_dir)
        if previous.backend:
            manager.cleanup(previous.backend, opts.state_dir)
        else:
            from podnet.fastpath import node as fastpath

            fastpath.remove()
        if (kept := _remove_pod_bridge(bridge, previous.subnet)) is not None:
            warnings.append(kept)
        firewall.remove()
        nft.remove_tables()
        policy_compile.remove()
        pending.remove()
        for path in (opts.cni_socket, os.path.join(opts.cni_conf_dir, conflist.FILENAME),
                     state.path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        try:
            os.rmdir(opts.pod_records)
        except FileNotFoundError:
            pass
        except OSError:
            warnings.append(f"pods remain on this node (records in {opts.pod_records}): "
                            "delete them through the runtime first")
    finally:
        state.unlock()
    return warnings


def _conflist_bridge(conf_dir: str) -> str:
    """The pod bridge the agent's conflist names (the default where there is none)."""
    try:
        with open(os.path.join(conf_dir, conflist.FILENAME)) as fh:
            return str(json.load(fh)["plugins"][0].get("bridge", Backend.pod_bridge))
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return Backend.pod_bridge


def _remove_pod_bridge(name: str, subnet: str) -> str | None:
    """Delete the pod bridge, or where pods are still on it, only the lease's gateway address
    (its route goes with it); a warning in that case."""
    ipr = links.IPRoute(groups=0)
    try:
        index = links.index_of(ipr, name)
        if index is None:
            return None
        ports = [m for m in ipr.get_links() if m.get_attr("IFLA_MASTER") == index]
        if not ports:
            ipr.link("del", index=index)
            return None
        if subnet:
            net = ipaddress.ip_network(subnet)
            for have in links.addresses(ipr, index):
                if have.ip in net:
                    links.del_address(ipr, index, str(have))
        return (f"{name} kept: {len(ports)} interfaces are still on it (delete their pods "
                "first)")
    finally:
        ipr.close()

