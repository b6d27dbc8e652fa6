"""Routes on the default gateway router.

`bgp` mode: each node runs BIRD (the router daemon itself, from Debian), announcing only its own
pod subnet to its default gateway over eBGP; the router routes each pod subnet to its node, so
nodes need nothing but their default route, and may sit in different underlay subnets. A node
that leaves stops its BIRD, the session drops and the router withdraws the subnet.
BIRD runs as a process of its own, so an agent restart leaves the routes in place.

`static` mode: the router is a Linux machine running `podnet agent --role router`, which
installs a route per lease itself (RouterBackend).
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


def default_gateway() -> str | None:
    ipr = IPRoute(groups=0)
    try:
        for r in ipr.get_routes(family=socket.AF_INET, table=254):
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


def node_bird_config(node_ip: str, subnet: str, router: str, node_as: int,
                     router_as: int) -> str:
    return f"""# written by podnet: announce this node's pod subnet to its default gateway
router id {node_ip};
protocol device {{}}
# Only for export to BGP: never installed in this node's kernel (no kernel protocol here).
protocol static podnet_subnet {{ ipv4; route {subnet} blackhole; }}
protocol bgp podnet_gateway {{
  local {node_ip} as {node_as};
  neighbor {router} as {router_as};
  hold time 9;
  ipv4 {{ import none; export where proto = "podnet_subnet"; }};
}}
"""


def router_bird_config(router_id: str, network: str, router_as: int, node_as: int,
                       neighbors: str) -> str:
    """A router that learns the pod subnets from any node in `neighbors` (dynamic BGP)."""
    return f"""# podnet lab router: pod subnets learned over BGP, installed in the kernel
router id {router_id};
protocol device {{}}
protocol kernel {{ ipv4 {{ import none; export all; }}; }}
protocol bgp nodes {{
  local as {router_as};
  neighbor range {neighbors} as {node_as};
  dynamic name "node";
  hold time 9;
  ipv4 {{ import where net ~ [ {network}{{{network.split('/')[1]},32}} ]; export none; }};
}}
"""


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

    def start(self, own: Lease) -> None:
        super().start(own)
        if self.mode != "bgp":
            return
        router = self.config.backend.get("router") or default_gateway()
        if router is None:
            raise BackendError("the gateway backend needs a default route (or the backend "
                               "option 'router') to find the router")
        conf, ctl, pidfile = bird_paths(self.node.state_dir)
        os.makedirs(self.node.state_dir, exist_ok=True)
        config = node_bird_config(str(self.node.ip), str(own.subnet), str(router),
                                  self.node_as, self.router_as)
        if bird_pid(self.node.state_dir) is not None:
            with open(conf) as fh:
                if fh.read() == config:
                    return  # BIRD from before the agent restarted announces the same
            stop_bird(self.node.state_dir)
        start_bird(config, conf, ctl, pidfile)
        log.info("BIRD announces %s to %s (AS %d -> AS %d)", own.subnet, router,
                 self.node_as, self.router_as)

    def entries_for(self, peer: Lease) -> frozenset[Entry]:
        return frozenset()  # the router routes between the nodes


class RouterBackend(Backend):
    """`podnet agent --role router`: this machine is the nodes' gateway; it routes every pod
    subnet to its node itself (the gateway backend's static mode)."""

    name = "router"

    def pod_mtu(self) -> int:
        return self.node.mtu

    def entries_for(self, peer: Lease) -> frozenset[Entry]:
        oif = self.connected_link(peer.node_ip)
        if oif is None:
            log.error("router: node %s (%s) is not directly connected; not routing %s",
                      peer.node, peer.node_ip, peer.subnet)
            return frozenset()
        return frozenset({Route(str(peer.subnet), str(peer.node_ip), oif)})

