"""The agent's side of `podnet verify --etcd` (the protocol: channel.py): on a request, echo
servers in its node and pods; on go, probes from them to every target; the answer in etcd."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from podnet import podrecords
from podnet.datastore.base import DatastoreError
from podnet.datastore.etcd import VERIFY, EtcdStore
from podnet.netlink import netns
from podnet.verify import channel, check, probes
from podnet.verify.policy import MAX_PORTS

log = logging.getLogger("podnet.verify")


@dataclass
class _Run:
    request: str
    go: str = ""
    going: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)


@dataclass
class Local:
    """What this node answers for: its node and its pods' records."""

    node: str
    # Its address of each family the cluster has (Lease.address), by family.
    addresses: dict[int, str]
    records_dir: str
    pod_mtu: int | None
    # What this node lacks towards each peer (diagnose.node_lacks), asked after the probes.
    lacks: Callable[[], dict[str, list[str]]]
    lease: Callable[[], int]  # the node's etcd lease now: its answers live on it


def request_ports(raw: object) -> list[check.Probe]:
    """The request's ports to serve and probe ([protocol, number] each), at most as many as
    verify asks for; ValueError for anything else."""
    if not isinstance(raw, list) or len(raw) > MAX_PORTS:
        raise ValueError(f"ports: not a list of at most {MAX_PORTS}")
    out: list[check.Probe] = []
    for item in raw:
        if (not isinstance(item, list) or len(item) != 2 or item[0] not in probes.SERVERS
                or not isinstance(item[1], int) or not 1 <= item[1] <= 65535):
            raise ValueError(f"ports: {item!r} is not [TCP|UDP|SCTP, 1-65535]")
        out.append((item[0], item[1]))
    return out


class Responder:
    def __init__(self, store: EtcdStore, local: Local, stopping: threading.Event) -> None:
        self.store = store
        self.local = local
        self.stopping = stopping
        self.runs: dict[str, _Run] = {}
        self.lock = threading.Lock()
        # One run's echo servers at a time: the next run (verify's next family) binds the same
        # port, and may come while the last one's servers are still closing.
        self.serving = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._loop, name="verify", daemon=True).start()

    def _loop(self) -> None:
        revision: int | None = None
        while not self.stopping.is_set():
            try:
                if revision is None:
                    revision = self.store.revision(VERIFY)
                revision = self.store.watch_prefix(VERIFY, revision, self._on_change,
                                                   self.stopping.is_set)
            except DatastoreError:
                revision = None  # the watch loop reports the datastore's state
                self.stopping.wait(1.0)
            except Exception:
                log.exception("verify watch failed")
                revision = None
                self.stopping.wait(1.0)

    def _on_change(self, key: str, value: str | None, _revision: int) -> None:
        parts = channel.split_request(key)
        if parts is None:
            return
        rid, go = parts
        with self.lock:
            run = self.runs.get(rid)
            if not go and value is None and run is not None:
                run.ended.set()
            elif not go and value is not None and run is None:
                self.runs[rid] = run = _Run(value)
                threading.Thread(target=self._answer, args=(rid, run), name=f"verify-{rid}",
                                 daemon=True).start()
            elif go and value is not None and run is not None:
                run.go = value
                run.going.set()

    def endpoints(self, family: int = 4) -> tuple[list[check.Endpoint], dict[str, str]]:
        """This node and its pods whose namespaces it can enter, by their addresses of
        `family`; why it cannot, by pod."""
        me = self.local
        node_ip = me.addresses.get(family)
        out = [] if node_ip is None else [
            check.Endpoint(me.node, "node", f"/proc/{os.getpid()}/ns/net", node_ip, me.node)]
        problems: dict[str, str] = {}
        for rec in podrecords.read_all(me.records_dir).values():
            ips = [ip for ip in rec.ips if (":" in ip) == (family == 6)]
            if not ips:
                continue
            try:
                fd = os.open(rec.netns, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                problems[rec.display] = (f"its network namespace {rec.netns} is gone on node "
                                         f"{me.node} ({exc.strerror}): the runtime has not "
                                         "deleted the pod")
                continue
            try:
                if not netns.is_netns(fd):
                    problems[rec.display] = f"{rec.netns} is no longer a network namespace"
                    continue
            finally:
                os.close(fd)
            out.append(check.Endpoint(rec.display, "pod", rec.netns, ips[0], me.node))
        return out, problems

    def _answer(self, rid: str, run: _Run) -> None:
        with self.serving:
            self._serve(rid, run)

    def _serve(self, rid: str, run: _Run) -> None:
        servers: list[probes.Echo] = []
        try:
            req = json.loads(run.request)
            port, timeout = int(req["port"]), float(req["timeout"])
            family = int(req.get("family", 4))
            ports = request_ports(req.get("ports", []))
            deadline = time.monotonic() + timeout
            local, problems = self.endpoints(family)
            serving = []
            for e in local:
                serves = [("TCP", port)] + (ports if e.kind == "pod" else [])
                try:
                    for protocol, number in serves:
                        servers.append(probes.SERVERS[protocol](e.netns, number))
                    serving.append(e)
                except OSError as exc:
                    problems[e.name] = (f"cannot serve probes on {protocol} port {number}: "
                                        f"{exc.strerror}")
            me = self.local.node
            self.store.put(channel.answer_key(me, rid, channel.READY),
                           json.dumps({"problems": problems}), self.local.lease())
            if not run.going.wait(max(0.0, deadline - time.monotonic())):
                return
            targets = [channel.endpoint_from(o) for o in json.loads(run.go)["targets"]]
            wanted = {t.name for t in targets if t.node == me}
            sources = [e for e in serving if e.name in wanted]
            addrs = {e.name: check.own_addresses(e.netns) for e in sources}
            own = {e.name: e.ip in addrs[e.name] for e in sources if e.kind == "pod"}
            pairs, mtu = check.probe(check.plan(sources, targets),
                                     check.mtu_plan(sources, targets), self.local.pod_mtu, addrs,
                                     ports=ports)
            self.store.put(channel.answer_key(me, rid, channel.RESULT), json.dumps({
                "pairs": [asdict(p) for p in pairs], "own_address": own, "mtu": mtu,
                "lacks": self.local.lacks()}), self.local.lease())
            # The others may still be probing this node's servers.
            run.ended.wait(max(0.0, deadline - time.monotonic()))
        except (DatastoreError, ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("verify run %s: %s", rid, exc)
        finally:
            for server in servers:
                server.close()
            with self.lock:
                self.runs.pop(rid, None)
            for step in (channel.READY, channel.RESULT):
                try:
                    self.store.delete(channel.answer_key(self.local.node, rid, step))
                except DatastoreError as exc:  # they go with the node's lease at the latest
                    log.debug("verify run %s: %s", rid, exc)
