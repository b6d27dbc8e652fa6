"""Routes on the default gateway router.

`bgp` mode: each node runs BIRD (the router daemon itself, from Debian), announcing only its own
pod subnets to its default gateway over eBGP, one session per underlay family (IPv6 pods over an
IPv6 session to the IPv6 default gateway: the next hop the router learns is then the node's own
IPv6 address); the router routes each pod subnet to its node, so nodes need nothing but their
default routes, and may sit in different underlay subnets. A node that leaves stops its BIRD,
the sessions drop and the router withdraws the subnets. BIRD runs as a process of its own, so
an agent restart leaves the routes in place.

`static` mode: the router is a Linux machine running `podnet agent --role router`, which
installs a route per lease and family itself (RouterBackend), via the node's address of the
family.

Over an IPv6-only underlay, IPv4 pods ride the IPv6 session (BGP's extended next hop, RFC
8950): the router routes their subnet via the node's IPv6 address, and the node its IPv4 pod
network via the IPv6 gateway (RFC 5549, as host-gw does). A node without an IPv4 address
takes a BGP router ID hashed from its name, as Calico's `Hash` router IDs are.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import signal
import socket
import subprocess
from typing import Any

from pyroute2 import IPRoute

from podnet.backends.base import Backend, BackendError, Entry, Route
from podnet.datastore.model import Lease, NodeIP

log = logging.getLogger("podnet.backend")
DEFAULT_ROUTER_AS = 64512
DEFAULT_NODE_AS = 64513


def default_gateway(family: int = socket.AF_INET) -> str | None:
    ipr = IPRoute(groups=0)
    try:
        for r in ipr.get_routes(family=family, table=254):
            if r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY"):
                return str(r.get_attr("RTA_GATEWAY"))
    finally:
        ipr.close()
    return None


def bird_paths(state_dir: str) -> tuple[str, str, str]:
    base = os.path.join(state_dir, "bird")
    return base + ".conf", base + ".ctl", base + ".pid"


def bird_pid(state_dir: str) -> int | None:
    _, _, pidfile = bird_paths(state_dir)
    try:
        with open(pidfile) as fh:
            pid = int(fh.read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def stop_bird(state_dir: str) -> None:
    pid = bird_pid(state_dir)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


# Per family: BIRD's channel, the suffix of its protocols' names, a prefix's longest length.
_BIRD = {4: ("ipv4", "", 32), 6: ("ipv6", "6", 128)}


def router_id(node: str, ip: NodeIP) -> str:
    """A node's BGP router ID: its IPv4 address, or (IPv6-only) 32 bits of its name's hash,
    stable across restarts and, in practice, unique."""
    if ip.version == 4:
        return str(ip)
    raw = int.from_bytes(hashlib.sha256(node.encode()).digest()[:4], "big")
    return str(ipaddress.IPv4Address(raw or 1))


def _family(prefix: str) -> int:
    return 6 if ":" in prefix else 4


def _channel(family: int, session_family: int, filters: str) -> str:
    """A BGP channel; IPv4 over an IPv6 session takes IPv6 next hops (RFC 8950)."""
    extended = " extended next hop on;" if family == 4 and session_family == 6 else ""
    return f"  {_BIRD[family][0]} {{{extended} {filters} }};\n"


def node_bird_config(router_id: str, sessions: list[tuple[str, str, list[str]]],
                     node_as: int, router_as: int) -> str:
    """BIRD on a node: per pod subnet one static route, never installed in this node's kernel
    (no kernel protocol here); per (local address, router, subnets) one session exporting
    them, a channel per family."""
    out = [f"# written by podnet: announce this node's pod subnets to its default gateway\n"
           f"router id {router_id};\nprotocol device {{}}\n"]
    for _, _, subnets in sessions:
        for subnet in subnets:
            channel, suffix, _ = _BIRD[_family(subnet)]
            out.append(f"protocol static podnet_subnet{suffix} {{\n"
                       f"  {channel}; route {subnet} blackhole;\n}}\n")
    for local, router, subnets in sessions:
        channels = "".join(
            _channel(_family(subnet), _family(local), "import none; export where proto = "
                     f'"podnet_subnet{_BIRD[_family(subnet)][1]}";') for subnet in subnets)
        out.append(f"""protocol bgp podnet_gateway{_BIRD[_family(local)][1]} {{
  local {local} as {node_as};
  neighbor {router} as {router_as};
  hold time 9;
{channels}}}
""")
    return "".join(out)


def router_bird_config(router_id: str, sessions: list[tuple[str, list[str]]], router_as: int,
                       node_as: int) -> str:
    """A router that learns pod subnets from any node of a neighbour range (dynamic BGP): per
    (range, pod networks) one session, a channel per network's family, and per family a
    kernel protocol installing what it learned."""
    out = [f"# podnet lab router: pod subnets learned over BGP, installed in the kernel\n"
           f"router id {router_id};\nprotocol device {{}}\n"]
    for family in sorted({_family(n) for _, networks in sessions for n in networks}):
        out.append(f"protocol kernel {{ {_BIRD[family][0]} {{ import none; export all; }}; }}\n")
    for neighbors, networks in sessions:
        suffix = _BIRD[_family(neighbors)][1]
        channels = "".join(
            _channel(_family(network), _family(neighbors),
                     f"import where net ~ [ {network}{{{network.split('/')[1]},"
                     f"{_BIRD[_family(network)][2]}}} ]; export none;") for network in networks)
        out.append(f"""protocol bgp nodes{suffix} {{
  local as {router_as};
  neighbor range {neighbors} as {node_as};
  dynamic name "node{suffix}";
  hold time 9;
{channels}}}
""")
    return "".join(out)


def start_bird(config: str, conf: str, ctl: str, pidfile: str) -> None:
    with open(conf, "w") as fh:
        fh.write(config)
    try:
        subprocess.run(["bird", "-c", conf, "-s", ctl, "-P", pidfile], check=True,
                       capture_output=True, timeout=30)
    except FileNotFoundError:
        raise BackendError("the gateway backend needs BIRD 2 (Debian package bird2)") from None
    except subprocess.CalledProcessError as exc:
        raise BackendError(f"BIRD refused its config: {exc.stderr.decode().strip()}") from None


class GatewayBackend(Backend):
    name = "gateway"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        opts = self.config.backend
        self.mode = str(opts.get("mode", "bgp"))
        if self.mode not in ("bgp", "static"):
            raise BackendError(f"gateway mode {self.mode!r} is 'bgp' or 'static'")
        self.router_as = int(opts.get("routerAS", DEFAULT_ROUTER_AS))
        self.node_as = int(opts.get("nodeAS", DEFAULT_NODE_AS))

    def pod_mtu(self) -> int:
        return self.node.mtu

    @classmethod
    def cleanup(cls, ipr: IPRoute, state_dir: str) -> None:
        stop_bird(state_dir)

    def setup(self) -> dict[str, Any]:
        if self.mode == "bgp":  # each family's session can be had, before the lease is taken
            for family in self.config.families:
                self._session(family)
        return {}

    def start(self, own: Lease) -> None:
        super().start(own)
        if self.mode != "bgp":
            return
        grouped: dict[tuple[str, str], list[str]] = {}
        for subnet in own.subnets:
            grouped.setdefault(self._session(subnet.version), []).append(str(subnet))
        sessions = [(local, router, subnets) for (local, router), subnets in grouped.items()]
        conf, ctl, pidfile = bird_paths(self.node.state_dir)
        os.makedirs(self.node.state_dir, exist_ok=True)
        config = node_bird_config(router_id(self.node.name, self.node.ip), sessions,
                                  self.node_as, self.router_as)
        if bird_pid(self.node.state_dir) is not None:
            with open(conf) as fh:
                if fh.read() == config:
                    return  # BIRD from before the agent restarted announces the same
            stop_bird(self.node.state_dir)
        start_bird(config, conf, ctl, pidfile)
        for _, router, subnets in sessions:
            log.info("BIRD announces %s to %s (AS %d -> AS %d)", ", ".join(subnets), router,
                     self.node_as, self.router_as)

    def _session(self, family: int) -> tuple[str, str]:
        """This node's end and the router's of the BGP session that carries `family`'s pods:
        of that family, or IPv6 for IPv4 pods of an IPv6-only node."""
        over = 6 if family == 6 or self.node.ip.version == 6 else 4
        local = self.node.ip if self.node.ip.version == over else self.node.ip6
        router = self._router(over)
        if local is None or router is None:
            raise BackendError(f"the gateway backend announces IPv{family} pods over "
                               f"IPv{over}: node {self.node.name} has no IPv{over} "
                               f"{'address' if local is None else 'default route'} on its "
                               f"underlay (give it one, e.g. --node-ip IPV4,IPV6, or the "
                               f"backend option {'router' if over == 4 else 'router6'})")
        return str(local), router

    def _router(self, family: int) -> str | None:
        """The router of `family`: the backend option, else the default gateway."""
        option = self.config.backend.get("router" if family == 4 else "router6")
        return (str(option) if option
                else default_gateway(socket.AF_INET if family == 4 else socket.AF_INET6))

    def own_entries(self) -> frozenset[Entry]:
        # An IPv6-only node has no IPv4 default route: its IPv4 pods' packets to other nodes
        # go to the IPv6 gateway (RFC 5549), which the router routes on.
        if self.node.ip.version == 4 or 4 not in self.config.families:
            return frozenset()
        router = self._router(6)
        if router is None:
            return frozenset()  # refused at setup, before any lease
        return frozenset({Route(str(self.config.network), router, self.node.iface_index)})

    def entries_for(self, peer: Lease) -> frozenset[Entry]:
        return frozenset()  # the router routes between the nodes


class RouterBackend(Backend):
    """`podnet agent --role router`: this machine is the nodes' gateway; it routes every pod
    subnet to its node itself (the gateway backend's static mode)."""

    name = "router"

    def pod_mtu(self) -> int:
        return self.node.mtu

    def entries_for(self, peer: Lease) -> frozenset[Entry]:
        out = set()
        for subnet in peer.subnets:
            # IPv4 pods of a node without IPv4 via its IPv6 address (RFC 5549).
            via = peer.underlay_ip(subnet.version) or (
                peer.node_ip if subnet.version == 4 else None)
            oif = None if via is None else self.connected_link(via)
            if via is None or oif is None:
                log.error("router: node %s has no directly connected IPv%d address (%s); not "
                          "routing %s", peer.node, subnet.version, via, subnet)
                continue
            out.add(Route(str(subnet), str(via), oif))
        return frozenset(out)

