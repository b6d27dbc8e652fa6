"""Routes on the default gateway router.

`bgp` mode: each node runs BIRD (the router daemon itself, from Debian), announcing only its own
pod subnets to its default gateway over eBGP, one session per family (IPv6 pods over an IPv6
session to the IPv6 default gateway: the next hop the router learns is then the node's own IPv6
address); the router routes each pod subnet to its node, so nodes need nothing but their default
routes, and may sit in different underlay subnets. A node that leaves stops its BIRD, the
sessions drop and the router withdraws the subnets. BIRD runs as a process of its own, so an
agent restart leaves the routes in place.

`static` mode: the router is a Linux machine running `podnet agent --role router`, which
installs a route per lease and family itself (RouterBackend), via the node's address of the
family.

Either way the node's IPv4 address is its BGP router ID and IPv4 session's end: the gateway
backend runs over an IPv4 underlay, which carries IPv6 as well where the pods have IPv6.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
from typing import Any

from pyroute2 import IPRoute

from podnet.backends.base import Backend, BackendError, Entry, Route
from podnet.datastore.model import Lease

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


def node_bird_config(router_id: str, sessions: list[tuple[str, str, str]], node_as: int,
                     router_as: int) -> str:
    """BIRD on a node: per (pod subnet, local address, router) one static route, never
    installed in this node's kernel (no kernel protocol here), exported over one session."""
    out = [f"# written by podnet: announce this node's pod subnets to its default gateway\n"
           f"router id {router_id};\nprotocol device {{}}\n"]
    for subnet, local, router in sessions:
        channel, suffix, _ = _BIRD[6 if ":" in subnet else 4]
        out.append(f"""protocol static podnet_subnet{suffix} {{
  {channel}; route {subnet} blackhole;
}}
protocol bgp podnet_gateway{suffix} {{
  local {local} as {node_as};
  neighbor {router} as {router_as};
  hold time 9;
  {channel} {{ import none; export where proto = "podnet_subnet{suffix}"; }};
}}
""")
    return "".join(out)


def router_bird_config(router_id: str, networks: list[tuple[str, str]], router_as: int,
                       node_as: int) -> str:
    """A router that learns the pod subnets of each (pod network, neighbour range) from any
    node in the range (dynamic BGP), per family."""
    out = [f"# podnet lab router: pod subnets learned over BGP, installed in the kernel\n"
           f"router id {router_id};\nprotocol device {{}}\n"]
    for network, neighbors in networks:
        channel, suffix, longest = _BIRD[6 if ":" in network else 4]
        out.append(f"""protocol kernel {{ {channel} {{ import none; export all; }}; }}
protocol bgp nodes{suffix} {{
  local as {router_as};
  neighbor range {neighbors} as {node_as};
  dynamic name "node{suffix}";
  hold time 9;
  {channel} {{
    import where net ~ [ {network}{{{network.split('/')[1]},{longest}}} ]; export none;
  }};
}}
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
        sessions = [(str(subnet), *self._session(subnet.version)) for subnet in own.subnets]
        conf, ctl, pidfile = bird_paths(self.node.state_dir)
        os.makedirs(self.node.state_dir, exist_ok=True)
        config = node_bird_config(str(self.node.ip), sessions, self.node_as, self.router_as)
        if bird_pid(self.node.state_dir) is not None:
            with open(conf) as fh:
                if fh.read() == config:
                    return  # BIRD from before the agent restarted announces the same
            stop_bird(self.node.state_dir)
        start_bird(config, conf, ctl, pidfile)
        for subnet, _, router in sessions:
            log.info("BIRD announces %s to %s (AS %d -> AS %d)", subnet, router, self.node_as,
                     self.router_as)

    def _session(self, family: int) -> tuple[str, str]:
        """This node's end and the router's of the BGP session of `family`."""
        local = self.node.ip if family == 4 else self.node.ip6
        router = (self.config.backend.get("router" if family == 4 else "router6")
                  or default_gateway(socket.AF_INET if family == 4 else socket.AF_INET6))
        if local is None or router is None:
            raise BackendError(f"the gateway backend announces IPv{family} pods over "
                               f"IPv{family}: node {self.node.name} has no IPv{family} "
                               f"{'address' if local is None else 'default route'} on its "
                               f"underlay (give it one, e.g. --node-ip IPV4,IPV6, or the "
                               f"backend option {'router' if family == 4 else 'router6'})")
        return str(local), str(router)

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
            via = peer.underlay_ip(subnet.version)
            oif = None if via is None else self.connected_link(via)
            if via is None or oif is None:
                log.error("router: node %s has no directly connected IPv%d address (%s); not "
                          "routing %s", peer.node, subnet.version, via, subnet)
                continue
            out.add(Route(str(subnet), str(via), oif))
        return frozenset(out)

