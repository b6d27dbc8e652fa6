"""etcd v3 through its JSON gateway (`/v3/...`): JSON over HTTP(S) (gateway.py), keys and
values base64-encoded as the gateway has them.

Key layout (see docs/datastore.md):
  /podnet/config                     the NetworkConfig
  /podnet/subnets/<addr>-<len>       a node's Lease, bound to an etcd lease with a TTL
  /podnet/nodes/<name>               {"subnet", "leaseID"}: one agent per node name, same etcd lease
  /podnet/assignments/<name>         {"subnet"}: the one subnet a node with credentials may lease
  /podnet/pods/<node>/<veth>         a PodRecord the node's agent publishes, on its etcd lease
  /podnet/verify/<id>[/go]           a `podnet verify` run's request (verify/channel.py), and
  /podnet/answers/<node>/<id>/<step> each agent's answers, all on the request's etcd lease
Every key a node writes is under a prefix of its own name, or its assigned subnet's: etcd's
roles can then confine a node's credentials to them (credentials.py).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import json
import logging
import random
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from podnet.datastore import gateway
from podnet.datastore.base import DatastoreError, Event, Held, LeaseRefused, PermissionDenied
from podnet.datastore.model import ConfigError, Lease, NetworkConfig, PodNetwork, subnet_key

log = logging.getLogger("podnet.datastore")
PREFIX = "/podnet/"
CONFIG_KEY = PREFIX + "config"
SUBNETS = PREFIX + "subnets/"
NODES = PREFIX + "nodes/"
PODS = PREFIX + "pods/"
VERIFY = PREFIX + "verify/"
ANSWERS = PREFIX + "answers/"
ASSIGNMENTS = PREFIX + "assignments/"
IDLE = 10.0  # seconds a watch stream may stay silent before it is re-made
TXN_OPS = 128  # etcd's --max-txn-ops default: the most a transaction may hold


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode("utf-8", "replace")


def prefix_end(prefix: str) -> str:
    """The end of the key range of every key that starts with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class _TokenRefused(DatastoreError):
    """etcd no longer knows the auth token: authenticate again."""


def _message(reply: gateway.Reply) -> str:
    try:
        return str(reply.json().get("message", reply.text[:200]))
    except (ValueError, AttributeError):
        return reply.text[:200]


class EtcdStore:
    """etcd at one or more member URLs: a request that a member could not have taken
    (connection refused or not made, or 503, no leader) goes to the next member; one that may
    have been applied (a read timeout) is the caller's to retry."""

    def __init__(self, url: str | list[str], ca_cert: str | None = None,
                 cert: str | None = None, key: str | None = None, timeout: float = 5.0,
                 user: str | None = None, password: str | None = None) -> None:
        self.user, self._password = user, password
        self._token_lock = threading.Lock()
        self.urls = [url] if isinstance(url, str) else list(url)
        self.members = [gateway.Member(member, ca_cert, cert, key) for member in self.urls]
        self._index = 0
        self.timeout = timeout
        self._streams: list[http.client.HTTPConnection] = []  # open watches, closed by close()

    @property
    def member(self) -> gateway.Member:
        return self.members[self._index]

    def _next_member(self) -> None:
        self._index = (self._index + 1) % len(self.members)

    # -- plumbing ---------------------------------------------------------------------------
    def _authenticate(self, stale: str | bytes | None = None) -> None:
        """A token for the user, in every member's headers; `stale`: the token etcd refused
        (another thread may have renewed it meanwhile)."""
        with self._token_lock:
            current = self.members[0].headers.get("Authorization")
            if current is not None and current != stale:
                return  # another thread has authenticated since
            for member in self.members:
                member.headers.pop("Authorization", None)
            out = self._post("/auth/authenticate", {"name": self.user,
                                                    "password": self._password}, auth=False)
            for member in self.members:
                member.headers["Authorization"] = str(out["token"])

    def _post(self, path: str, payload: dict[str, Any], auth: bool = True) -> dict[str, Any]:
        if auth and self.user is not None:
            token = self.members[0].headers.get("Authorization")
            if token is None:
                self._authenticate()
                token = self.members[0].headers.get("Authorization")
            try:
                return self._post(path, payload, auth=False)
            except _TokenRefused:
                # Tokens expire (--auth-token-ttl) and die with a restarted member.
                self._authenticate(stale=token)
                return self._post(path, payload, auth=False)
        why = ""
        for _ in self.members:
            try:
                resp = self.member.post(path, payload, self.timeout)
            except gateway.Unreachable as exc:  # not delivered: another member may take it
                why = str(exc)
                self._next_member()
                continue
            except gateway.TimedOut as exc:
                raise DatastoreError(f"etcd unreachable: {exc}") from None
            if resp.status == 503:  # this member has no leader: another may
                why = f"{self.urls[self._index]}: HTTP 503: {resp.text[:200]}"
                self._next_member()
                continue
            if resp.status == 401:
                raise _TokenRefused(resp.text[:200])
            if resp.status == 403 or (resp.status == 400 and (
                    path == "/auth/authenticate" or "user name is empty" in resp.text)):
                raise PermissionDenied(f"etcd refused {path} for user {self.user or '(none)'}: "
                                       f"{_message(resp)}")
            if resp.status != 200:
                raise DatastoreError(f"etcd {path}: HTTP {resp.status}: {resp.text[:200]}")
            try:
                out: dict[str, Any] = resp.json()
            except ValueError:
                raise DatastoreError(f"etcd {path}: not JSON: {resp.text[:200]}") from None
            return out
        raise DatastoreError(f"etcd unreachable: no member answers ({why})")

    def _range(self, prefix: str, keys_only: bool = False) -> tuple[list[dict[str, Any]], int]:
        payload: dict[str, Any] = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        if keys_only:
            payload["keys_only"] = True
        out = self._post("/kv/range", payload)
        return out.get("kvs", []), int(out["header"]["revision"])

    def get(self, key: str) -> str | None:
        out = self._post("/kv/range", {"key": _b64(key)})
        kvs = out.get("kvs", [])
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def get_many(self, keys: list[str]) -> list[str | None]:
        """Each key's value, read in transactions of at most TXN_OPS (as put_all writes): one
        round trip, and one revision, where they fit one."""
        values: list[str | None] = []
        for start in range(0, len(keys), TXN_OPS):
            out = self._post("/kv/txn", {"compare": [], "failure": [], "success": [
                {"request_range": {"key": _b64(key)}} for key in keys[start:start + TXN_OPS]]})
            for response in out.get("responses", []):
                kvs = response.get("response_range", {}).get("kvs", [])
                values.append(_unb64(kvs[0].get("value", "")) if kvs else None)
        if len(values) != len(keys):
            raise DatastoreError(f"etcd answered {len(values)} of {len(keys)} reads")
        return values

    # -- keys of podnet's other records (pods, verify runs) -----------------------------------
    def get_prefix(self, prefix: str) -> dict[str, str]:
        kvs, _ = self._range(prefix)
        return {_unb64(kv["key"]): _unb64(kv.get("value", "")) for kv in kvs}

    def put(self, key: str, value: str, lease: int = 0) -> None:
        payload: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            payload["lease"] = lease
        self._post("/kv/put", payload)

    def delete(self, key: str) -> None:
        self._post("/kv/deleterange", {"key": _b64(key)})

    def delete_prefix(self, prefix: str) -> None:
        self._post("/kv/deleterange", {"key": _b64(prefix),
                                       "range_end": _b64(prefix_end(prefix))})

    def put_all(self, items: Mapping[str, str]) -> None:
        """Write the keys in transactions of at most TXN_OPS (etcd's own bound, 128 by
        default): atomically where they fit one."""
        pairs = list(items.items())
        for start in range(0, len(pairs), TXN_OPS):
            self._post("/kv/txn", {"compare": [], "failure": [], "success": [
                {"request_put": {"key": _b64(k), "value": _b64(v)}}
                for k, v in pairs[start:start + TXN_OPS]]})

    def grant(self, ttl: int) -> int:
        return int(self._post("/lease/grant", {"TTL": ttl})["ID"])

    def revoke(self, lease: int) -> None:
        self._post("/kv/lease/revoke", {"ID": lease})

    def revision(self, prefix: str) -> int:
        """The store's revision now: a watch of `prefix` from it sees every later change."""
        return self._range(prefix, keys_only=True)[1]

    def publish_pods(self, held: Held, records: dict[str, str]) -> int:
        """Make this node's pod records in etcd `records` (by key), on its lease; the
        number of keys written or deleted."""
        prefix = f"{PODS}{held.lease.node}/"
        kvs, _ = self._range(prefix)
        have = {_unb64(kv["key"])[len(prefix):]: (_unb64(kv.get("value", "")),
                                                   int(kv.get("lease", 0))) for kv in kvs}
        ops: list[dict[str, Any]] = [{"request_delete_range": {"key": _b64(prefix + k)}}
               for k in have if k not in records]
        ops += [{"request_put": {"key": _b64(prefix + k), "value": _b64(v),
                                 "lease": held.lease_id}}
                for k, v in records.items() if have.get(k) != (v, held.lease_id)]
        if ops:
            self._post("/kv/txn", {"compare": [], "success": ops, "failure": []})
        return len(ops)

    def pods(self) -> dict[str, dict[str, str]]:
        """Every node's published pod records: node -> key -> raw record."""
        out: dict[str, dict[str, str]] = {}
        for key, raw in self.get_prefix(PODS).items():
            node, _, name = key[len(PODS):].partition("/")
            out.setdefault(node, {})[name] = raw
        return out

    def healthy(self) -> bool:
        try:
            self._post("/maintenance/status", {})
            return True
        except DatastoreError:
            return False

    # -- config -----------------------------------------------------------------------------
    def get_config(self) -> NetworkConfig | None:
        raw = self.get(CONFIG_KEY)
        return None if raw is None else NetworkConfig.from_json(raw)

    def put_config(self, config: NetworkConfig) -> None:
        self._post("/kv/put", {"key": _b64(CONFIG_KEY), "value": _b64(config.to_json())})

    # -- leases -----------------------------------------------------------------------------
    def _put_both(self, held: Held, node: str, compare_absent: bool) -> bool:
        skey = SUBNETS + subnet_key(held.lease.subnet)
        nkey = NODES + node
        node_val = json.dumps({"subnet": str(held.lease.subnet), "leaseID": held.lease_id})
        puts = [{"request_put": {"key": _b64(k), "value": _b64(v), "lease": held.lease_id}}
                for k, v in ((skey, held.lease.to_json()), (nkey, node_val))]
        compare = [{"key": _b64(k), "result": "EQUAL", "target": "CREATE",
                    "create_revision": 0} for k in (skey, nkey)] if compare_absent else []
        out = self._post("/kv/txn", {"compare": compare, "success": puts, "failure": []})
        return bool(out.get("succeeded", False))

    def acquire(self, node: str, node_ip: str, attrs: dict[str, object], ttl: int,
                config: NetworkConfig, prefer: Held | None,
                node_ip6: ipaddress.IPv6Address | None = None) -> Held:
        held_raw = self.get(NODES + node)
        if prefer is not None and held_raw is not None:
            mine = json.loads(held_raw)
            # Our own lease from before a restart: keep it, with its full TTL again (a keepalive
            # now, not at the renew loop's first turn, which may come after it expires), and
            # refresh the payload.
            if mine.get("leaseID") == prefer.lease_id and self.renew(prefer):
                lease = Lease.make(config, prefer.lease.subnet, node,
                                   ipaddress.ip_address(node_ip), dict(attrs), node_ip6)
                held = Held(lease, prefer.lease_id, ttl)
                self._put_both(held, node, compare_absent=False)
                return held
        if held_raw is not None:
            stale = self._own_earlier_run(node, node_ip, held_raw)
            if stale is None:
                raise LeaseRefused(f"node name {node!r} is already held by another live agent "
                                   f"(lease {json.loads(held_raw).get('leaseID')}); refusing "
                                   "to take it over")
            # The caller holds the host (one agent per host) and the lease names this very
            # address: an earlier run of this node that lost its state (a reboot with a new
            # disk). Its lease would block the node until it expired: release it now.
            log.warning("node %s: releasing lease %d of an earlier run at %s whose state was "
                        "lost", node, stale, node_ip)
            self.revoke(stale)
        kvs, _ = self._range(SUBNETS, keys_only=True)
        taken = {_unb64(kv["key"])[len(SUBNETS):] for kv in kvs}
        assigned = self.assignments()
        mine = assigned.pop(node, None)
        if mine is not None:
            # Credentials of this node's own allow it this subnet and no other.
            if mine.network_address not in config.network or mine.prefixlen != config.subnet_len:
                raise LeaseRefused(f"node {node!r} is assigned {mine}, not a /"
                                   f"{config.subnet_len} of {config.network} (issue its "
                                   "credentials again)")
            if subnet_key(mine) in taken:
                raise LeaseRefused(f"node {node!r}'s assigned subnet {mine} is leased by "
                                   "another node")
            free: Iterable[PodNetwork] = [mine]
        else:
            busy = taken | {subnet_key(s) for s in assigned.values()}
            free = _candidates(config, config.free_indices(busy),
                               prefer.lease.subnet if prefer is not None else None)
        lease_id = self.grant(ttl)
        for subnet in free:
            lease = Lease.make(config, subnet, node, ipaddress.ip_address(node_ip), dict(attrs),
                               node_ip6)
            held = Held(lease, lease_id, ttl)
            if self._put_both(held, node, compare_absent=True):
                return held
            if self.get(NODES + node) is not None:
                self.revoke(lease_id)
                raise LeaseRefused(f"node name {node!r} was taken by another agent meanwhile")
        self.revoke(lease_id)
        raise LeaseRefused(f"no free subnet for node {node!r}: all {config.capacity} "
                           f"/{config.subnet_len} subnets of {config.network} are leased")

    def assignments(self) -> dict[str, PodNetwork]:
        """Each node's assigned subnet (credentials.py); an unreadable one is skipped."""
        out: dict[str, PodNetwork] = {}
        for key, raw in self.get_prefix(ASSIGNMENTS).items():
            try:
                out[key[len(ASSIGNMENTS):]] = ipaddress.ip_network(json.loads(raw)["subnet"])
            except (ValueError, KeyError, TypeError):
                log.warning("skipping assignment %s: %r", key, raw[:80])
        return out

    # -- users and roles (etcd's authentication) ------------------------------------------
    def set_role(self, role: str, grants: list[tuple[str, str, str]]) -> None:
        """The role made anew with exactly these (type, key, range end) permissions."""
        with contextlib.suppress(DatastoreError):
            self._post("/auth/role/delete", {"role": role})  # a role not there yet
        self._post("/auth/role/add", {"name": role})
        for perm_type, key, range_end in grants:
            perm: dict[str, Any] = {"permType": perm_type, "key": _b64(key)}
            if range_end:
                perm["range_end"] = _b64(range_end)
            self._post("/auth/role/grant", {"name": role, "perm": perm})

    def enable_auth(self, root_password: str) -> None:
        """etcd's root user (with the root role) and authentication on."""
        self.set_user("root", root_password, "root")
        self._post("/auth/enable", {})

    def set_user(self, user: str, password: str, role: str) -> None:
        """The user with this password (a new one, or changed) and the role."""
        try:
            self._post("/auth/user/add", {"name": user, "password": password})
        except DatastoreError:
            self._post("/auth/user/changepw", {"name": user, "password": password})
        self._post("/auth/user/grant", {"user": user, "role": role})

    def _own_earlier_run(self, node: str, node_ip: str, held_raw: str) -> int | None:
        """The lease ID of the node key's holder where its lease names `node_ip`; else None."""
        try:
            held = json.loads(held_raw)
            payload = json.loads(self.get(SUBNETS + subnet_key(
                ipaddress.ip_network(held["subnet"]))) or "{}")
            if payload.get("node") == node and payload.get("nodeIP") == node_ip:
                return int(held["leaseID"])
        except (ValueError, KeyError, TypeError):
            pass
        return None

    def renew(self, held: Held) -> bool:
        out = self._post("/lease/keepalive", {"ID": held.lease_id})
        return int(out.get("result", {}).get("TTL", 0)) > 0

    def release(self, held: Held) -> None:
        self.revoke(held.lease_id)

    # -- peers ------------------------------------------------------------------------------
    def _parse(self, key: str, raw: str, config: NetworkConfig) -> Lease | None:
        try:
            lease = Lease.from_json(raw, config)
        except ConfigError as exc:
            log.warning("skipping lease %s: %s", key, exc)
            return None
        if subnet_key(lease.subnet) != key[len(SUBNETS):]:
            log.warning("skipping lease %s: payload claims subnet %s", key, lease.subnet)
            return None
        return lease

    def snapshot(self, config: NetworkConfig) -> tuple[dict[str, Lease], int]:
        kvs, revision = self._range(SUBNETS)
        out: dict[str, Lease] = {}
        for kv in kvs:
            key = _unb64(kv["key"])
            lease = self._parse(key, _unb64(kv.get("value", "")), config)
            if lease is not None:
                out[key] = lease
        return out, revision

    def watch(self, config: NetworkConfig, revision: int, on_event: Callable[[Event], None],
              stopped: Callable[[], bool]) -> int:
        def on_change(key: str, value: str | None, rev: int) -> None:
            if value is None:
                on_event(Event(key, None, rev, deleted=True))
            else:
                on_event(Event(key, self._parse(key, value, config), rev, deleted=False))

        return self.watch_prefix(SUBNETS, revision, on_change, stopped)

    def watch_prefix(self, prefix: str, revision: int,
                     on_change: Callable[[str, str | None, int], None],
                     stopped: Callable[[], bool]) -> int:
        """Deliver (key, value or None when deleted, revision) for each change under `prefix`
        after `revision`; returns the last revision seen when stopped or idle for a while,
        raises DatastoreError when the store fails."""
        create = {"create_request": {"key": _b64(prefix),
                                     "range_end": _b64(prefix_end(prefix)),
                                     "start_revision": revision + 1}}
        conn = None
        try:
            # The stream idles between events: a read timeout ends this call quietly, and the
            # caller (after a health check) watches again from the last revision seen.
            token = self.member.headers.get("Authorization")
            conn, resp = self.member.stream("/watch", create, self.timeout, IDLE)
            self._streams.append(conn)
            if resp.status == 401 and self.user is not None:
                self._authenticate(stale=token)
                raise DatastoreError("watch: etcd refused the auth token; authenticated again")
            if resp.status != 200:
                raise DatastoreError(f"watch: HTTP {resp.status}: "
                                     f"{_message(gateway.Reply(resp.status, resp.read()))}")
            for line in gateway.lines(resp):
                if stopped():
                    return revision
                if not line.strip():
                    continue
                result = json.loads(line).get("result", {})
                if result.get("compact_revision"):
                    raise DatastoreError("watch revision was compacted; resync needed")
                if result.get("canceled"):
                    raise DatastoreError(f"watch canceled: {result.get('cancel_reason')}")
                for ev in result.get("events", []):
                    kv = ev["kv"]
                    rev = int(kv.get("mod_revision", revision))
                    revision = max(revision, rev)
                    on_change(_unb64(kv["key"]), None if ev.get("type") == "DELETE"
                              else _unb64(kv.get("value", "")), rev)
        except TimeoutError:
            return revision  # idle
        except (gateway.Unreachable, ConnectionError) as exc:
            if stopped():
                return revision
            self._next_member()  # the next watch goes to another member
            raise DatastoreError(f"watch broken: {exc}") from None
        except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
            if stopped():
                return revision
            raise DatastoreError(f"watch broken: {exc!r}") from None
        finally:
            if conn is not None:
                with contextlib.suppress(ValueError):
                    self._streams.remove(conn)
                conn.close()
        if not stopped():
            raise DatastoreError("watch stream ended")
        return revision

    def close(self) -> None:
        for conn in list(self._streams):
            # Wake a watch blocked in its read: closing alone waits for the reader's buffer
            # lock, i.e. until etcd sends something or the stream idles out.
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
        for member in self.members:
            member.close()


def _candidates(config: NetworkConfig, free: list[int],
                prefer: PodNetwork | None) -> Iterator[PodNetwork]:
    """The free subnets to try, each made when reached: the one held before first, else a
    few at random (concurrent joiners rarely collide), then the rest in order."""
    first = random.sample(free, min(8, len(free)))
    index = config.subnet_index(prefer) if prefer is not None else None
    if index is not None and index in set(free):
        first = [index]
    tried = set(first)
    for index in first + [i for i in free if i not in tried]:
        yield config.subnet_at(index)

