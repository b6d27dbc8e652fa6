"""The `podnet` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any


def _cmd_cni_server(args: argparse.Namespace) -> int:
    from podnet.cni.server import serve

    serve(args.socket)
    return 0


def _cmd_install_cni(args: argparse.Namespace) -> int:
    from podnet.install import install_cni

    for path in install_cni(args.bin_dir, args.conf_dir):
        print(path)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from podnet.demo import main as demo

    return demo(keep=args.keep, backend=args.backend)


def _store(args: argparse.Namespace) -> Any:
    from podnet.datastore.open import open_store

    return open_store(args.etcd, ca_cert=args.etcd_ca, cert=args.etcd_cert, key=args.etcd_key)


def _add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--etcd", "--datastore", dest="etcd", default="http://127.0.0.1:2379",
                   help="etcd URL (http[s]://HOST:PORT) or file:///DIR for a single node")
    p.add_argument("--etcd-ca", help="CA certificate to verify etcd with")
    p.add_argument("--etcd-cert", help="client certificate for etcd")
    p.add_argument("--etcd-key", help="client certificate key for etcd")


def _cmd_cluster_init(args: argparse.Namespace) -> int:
    from podnet.datastore.model import ConfigError, NetworkConfig

    backend: dict[str, Any] = {"type": args.backend}
    if args.vni is not None:
        backend["vni"] = args.vni
    if args.port is not None:
        backend["port"] = args.port
    if args.direct_routing:
        backend["directRouting"] = True
    if args.gateway_mode:
        backend["mode"] = args.gateway_mode
    if args.fast_path == "off":
        backend["fastPath"] = False
    if args.vxlan_tx_checksum_offload != "auto":
        backend["txChecksumOffload"] = args.vxlan_tx_checksum_offload == "on"
    try:
        config = NetworkConfig.make(args.cidr, args.subnet_len, backend)
    except ConfigError as exc:
        print(f"podnet cluster init: {exc}", file=sys.stderr)
        return 2
    store = _store(args)
    old = store.get_config()
    if old is not None and old.network != config.network and not args.force:
        held = store.snapshot(old)[0]
        if held:
            print(f"podnet cluster init: {len(held)} nodes hold leases of {old.network}; a new "
                  f"network {config.network} would orphan them (--force to replace it anyway)",
                  file=sys.stderr)
            return 2
    store.put_config(config)
    print(f"cluster network {config.network}, /{config.subnet_len} per node "
          f"({config.capacity} nodes), backend {config.backend_type}")
    return 0


def _cmd_cluster_show(args: argparse.Namespace) -> int:
    store = _store(args)
    config = store.get_config()
    if config is None:
        print("the cluster is not initialised", file=sys.stderr)
        return 1
    leases, _ = store.snapshot(config)
    print(f"network {config.network}  subnet /{config.subnet_len}  backend {config.backend}")
    print(f"{'NODE':20} {'NODE IP':16} SUBNET")
    for lease in sorted(leases.values(), key=lambda item: item.subnet):
        print(f"{lease.node:20} {lease.node_ip!s:16} {lease.subnet}")
    return 0


def _cmd_agent(args: argparse.Namespace) -> int:
    from podnet.agent.agent import Agent, AgentOptions, leave
    from podnet.agent.logs import setup as setup_logs

    setup_logs(args.log_level)
    opts = AgentOptions(node_name=args.node_name, iface=args.iface, node_ip=args.node_ip,
                        cni_conf_dir=args.cni_conf_dir, cni_socket=args.cni_socket,
                        ipam_data_dir=args.ipam_data_dir, state_dir=args.state_dir,
                        ttl=args.ttl, reconcile_interval=args.reconcile_interval,
                        metrics_addr=args.metrics, role=args.role)
    if args.leave:
        leave(opts, _store(args))
        return 0
    agent = Agent(opts, _store(args))
    try:
        agent.run_forever()
    except Exception as exc:
        logging.getLogger("podnet.agent").error("agent failed: %s", exc)
        agent.stop()
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    from podnet.install import DEFAULT_SOCKET

    parser = argparse.ArgumentParser(prog="podnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("cni-server",
                       help="serve the CNI plugin on a unix socket (the agent embeds one)")
    p.add_argument("--socket", default=DEFAULT_SOCKET)
    p.set_defaults(func=_cmd_cni_server)
    p = sub.add_parser("install-cni", help="install the plugin executables (and a conflist)")
    p.add_argument("--bin-dir", required=True)
    p.add_argument("--conf-dir")
    p.set_defaults(func=_cmd_install_cni)
    p = sub.add_parser("cluster", help="the cluster's network config in the datastore")
    csub = p.add_subparsers(dest="cluster_command", required=True)
    c = csub.add_parser("init", help="store the cluster network config")
    _add_store_args(c)
    c.add_argument("--cidr", required=True, help="the cluster's pod network, e.g. 10.244.0.0/16")
    c.add_argument("--subnet-len", type=int, help="prefix length of each node's share")
    c.add_argument("--backend", required=True,
                   choices=["l2", "host-gw", "gateway", "vxlan", "gre"])
    c.add_argument("--force", action="store_true",
                   help="replace a network that nodes still hold leases of")
    c.add_argument("--vni", type=int, help="vxlan: VNI (default 1)")
    c.add_argument("--port", type=int, help="vxlan: UDP port (default 8472)")
    c.add_argument("--direct-routing", action="store_true",
                   help="vxlan: route on-link peers directly")
    c.add_argument("--vxlan-tx-checksum-offload", choices=["auto", "on", "off"], default="auto",
                   help="vxlan: auto keeps it on kernels from 5.7 (docs/backends.md)")
    c.add_argument("--gateway-mode", choices=["bgp", "static"],
                   help="gateway: announce over BGP (default) or let `agent --role router` "
                        "route")
    c.add_argument("--fast-path", choices=["on", "off"], default="on",
                   help="host-gw, gateway, vxlan: pods of different nodes skip the bridges "
                        "through eBPF where the kernel can (docs/fastpath.md)")
    c.set_defaults(func=_cmd_cluster_init)
    c = csub.add_parser("show", help="print the config and every lease")
    _add_store_args(c)
    c.set_defaults(func=_cmd_cluster_show)

    p = sub.add_parser("agent", help="run the node agent")
    _add_store_args(p)
    p.add_argument("--node-name", required=True)
    p.add_argument("--iface", help="the underlay interface (default: the default route's)")
    p.add_argument("--node-ip", help="the node's IP (default: --iface's first address)")
    p.add_argument("--cni-conf-dir", default="/etc/cni/net.d")
    p.add_argument("--cni-socket", default=DEFAULT_SOCKET)
    p.add_argument("--ipam-data-dir", help="podnet-ipam's dataDir (default host-local's)")
    p.add_argument("--state-dir", default="/var/lib/podnet/agent")
    p.add_argument("--ttl", type=int, default=60, help="lease TTL in seconds")
    p.add_argument("--reconcile-interval", type=float, default=10.0)
    p.add_argument("--metrics", default="127.0.0.1:9153", help="HOST:PORT, port 0 disables")
    p.add_argument("--log-level", default="info")
    p.add_argument("--role", default="node", choices=["node", "router"],
                   help="router: route every node's pod subnet here (gateway, static mode)")
    p.add_argument("--leave", action="store_true",
                   help="free this node's lease and remove podnet's state from the node, then "
                        "exit")
    p.set_defaults(func=_cmd_agent)

    from podnet.lab.cli import add_parser as add_lab

    add_lab(sub)
    from podnet.verify.cli import add_parser as add_verify

    add_verify(sub)

    p = sub.add_parser("demo", help="a 3-node lab, verified and drawn, then taken down")
    p.add_argument("--keep", action="store_true", help="leave the lab up")
    p.add_argument("--backend", default="vxlan", choices=["l2", "host-gw", "gateway", "vxlan"])
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv and "CNI_COMMAND" in os.environ:
        # Exec'd by a runtime under this name: behave as the plugin.
        from podnet.cni.shim import main as plugin_main

        plugin_main("podnet")
    args = build_parser().parse_args(argv)
    from podnet.datastore.base import DatastoreError

    try:
        rc: int = args.func(args)
    except (DatastoreError, ValueError) as exc:
        print(f"podnet {args.command}: {exc}", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
