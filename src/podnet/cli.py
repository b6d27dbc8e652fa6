"""The `podnet` command.

Every mistake of the user's ends the same way: `podnet <command>: <what> (<how to fix>)` on
stderr and a non-zero status, before anything is touched. Tracebacks only with --debug.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from podnet.datastore.args import add_args, from_args
from podnet.errors import UserError

if TYPE_CHECKING:
    from podnet.agent.options import AgentOptions

EXIT_USAGE = 2


class _ShowDefaults(argparse.HelpFormatter):
    """Every option's default in its help, unless the help says it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
        if shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """argparse whose errors follow podnet's form and whose help shows every default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _ShowDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        fix = "" if message.endswith(")") else f" (see `{self.prog} --help`)"
        self.exit(EXIT_USAGE, f"{self.prog}: {message}{fix}\n")


def in_range(kind: type[int] | type[float], low: float, high: float) -> Any:
    """An argparse type: a number from low to high."""
    noun = "a whole number" if kind is int else "a number"
    span = f"from {kind(low)} to {kind(high)}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text[:40]!r} is not {noun} (give {noun} {span})") from None
        if not low <= value <= high:  # NaN fails this too
            raise argparse.ArgumentTypeError(f"{text} is out of range (give {noun} {span})")
        return value
    parse.__name__ = kind.__name__
    return parse


def _cmd_cni_server(args: argparse.Namespace) -> int:
    from podnet import malloc
    from podnet.agent.options import check_socket_path
    from podnet.cni.server import serve

    check_socket_path("--socket", args.socket)
    malloc.steady_footprint()
    serve(args.socket)
    return 0


def _cmd_install_cni(args: argparse.Namespace) -> int:
    from podnet.install import install_cni

    for path in install_cni(args.bin_dir, args.conf_dir, args.subnet, args.python,
                            args.socket, args.host_root):
        print(path)
    return 0


def _cmd_cni(args: argparse.Namespace) -> int:
    """ADD or DEL a network namespace through the node's conflist and installed plugins, as a
    runtime does (what `cnitool` is to other networks): to try a node by hand."""
    from podnet.cni.errors import CNIError
    from podnet.cni.invoke import Runtime

    path = args.conflist
    fix = "give --conflist the file the agent wrote"
    try:
        with open(path) as fh:
            conflist = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the conflist {path}: {exc}", fix) from None
    if not isinstance(conflist, dict) or not isinstance(conflist.get("plugins"), list):
        raise UserError(f"{path} is not a network configuration list", fix)
    if not os.path.exists(args.netns):
        raise UserError(f"no network namespace at {args.netns}", "create it: ip netns add NAME")
    runtime = Runtime(path=args.cni_path.split(":"))
    try:
        if args.cni_command == "add":
            print(json.dumps(runtime.add_list(conflist, args.id, args.netns), indent=2))
        else:
            runtime.del_list(conflist, args.id, args.netns)
    except CNIError as exc:
        raise UserError(f"the plugins refused: {exc.msg}", exc.details or
                        "the agent's log and /var/log/podnet/cni.log say more") from None
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from podnet.demo import main as demo

    return demo(keep=args.keep, backend=args.backend)


def _cmd_cluster_init(args: argparse.Namespace) -> int:
    from podnet.datastore.model import ConfigError, NetworkConfig

    backend: dict[str, Any] = {"type": args.backend}
    for key, value in (("vni", args.vni), ("port", args.port), ("mode", args.gateway_mode),
                       ("directRouting", True if args.direct_routing else None),
                       ("fastPath", False if args.fast_path == "off" else None),
                       ("ipv6Masquerade", None if args.ipv6_masquerade == "auto"
                        else args.ipv6_masquerade == "on"),
                       ("txChecksumOffload", None if args.vxlan_tx_checksum_offload == "auto"
                        else args.vxlan_tx_checksum_offload == "on")):
        if value is not None:
            backend[key] = value
    if len(args.cidr) > 2:
        raise UserError(f"{len(args.cidr)} --cidr given", "give one per family: an IPv4 one, "
                        "and an IPv6 one beside it for dual-stack")
    # One per family, in either order: the IPv4 one first.
    cidrs = sorted(args.cidr, key=lambda c: ":" in c)
    try:
        config = NetworkConfig.make(cidrs[0], args.subnet_len, backend,
                                    cidrs[1] if len(cidrs) == 2 else None, args.subnet_len_v6)
    except ConfigError as exc:
        raise UserError.of(str(exc), "see `podnet cluster init --help`") from None
    if args.node_credentials:
        _check_credentials_args(args.node_credentials.split(","), args.credentials_out)
    store = from_args(args)
    old = store.get_config()
    if old is not None and old.network != config.network and not args.force:
        held = store.snapshot(old)[0]
        if held:
            raise UserError(f"{len(held)} nodes hold leases of {old.network}; a new network "
                            f"{config.network} would orphan them",
                            "--force to replace it anyway")
    store.put_config(config)
    v6 = ("" if config.network6 is None
          else f" and {config.network6}, /{config.subnet_len6} per node")
    print(f"cluster network {config.network}, /{config.subnet_len} per node{v6} "
          f"({config.capacity} nodes), backend {config.backend_type}")
    if args.node_credentials:
        _issue_credentials(store, config, args.node_credentials.split(","),
                           args.credentials_out)
    return 0


def _check_credentials_args(nodes: list[str], out: str | None) -> None:
    from podnet.datastore.model import node_name_problem

    for node in nodes:
        if (problem := node_name_problem(node)) is not None:
            raise UserError(problem, "give each node's Kubernetes name")
    if out is not None and not os.path.isdir(out):
        raise UserError(f"{out} is not a directory", "make it first")


def _issue_credentials(store: Any, config: Any, nodes: list[str], out: str | None) -> None:
    """Each node's own etcd user (docs/datastore.md): printed, or its password written."""
    from podnet.datastore.base import LeaseRefused
    from podnet.datastore.credentials import issue
    from podnet.datastore.etcd import EtcdStore
    from podnet.fsutil import write_atomic

    if not isinstance(store, EtcdStore):
        raise UserError("credentials are etcd's users: a file store has none",
                        "give --etcd http(s)://HOST:PORT")
    for node in nodes:
        try:
            user, password, subnet = issue(store, config, node)
        except LeaseRefused as exc:
            raise UserError(str(exc), "widen the cluster network or remove unused "
                            "assignments") from None
        if out is None:
            print(f"{node} {user} {password} {subnet}")
            continue
        path = os.path.join(out, f"{node}.password")
        write_atomic(path, password + "\n", 0o600)
        print(f"node {node}: etcd user {user}, subnet {subnet}, password in {path} (the agent: "
              f"--etcd-user {user} --etcd-password-file {path})")


def _cmd_cluster_credentials(args: argparse.Namespace) -> int:
    _check_credentials_args(args.node, args.out)
    store = from_args(args)
    config = store.get_config()
    if config is None:
        raise UserError("the cluster is not initialised", "run `podnet cluster init` first")
    _issue_credentials(store, config, args.node, args.out)
    return 0


def _cmd_cluster_show(args: argparse.Namespace) -> int:
    store = from_args(args)
    config = store.get_config()
    if config is None:
        raise UserError("the cluster is not initialised", "run `podnet cluster init` first")
    leases, _ = store.snapshot(config)
    rows = sorted(leases.values(), key=lambda item: item.subnet)
    if args.json:
        print(json.dumps({"config": json.loads(config.to_json()),
                          "leases": [json.loads(lease.to_json()) for lease in rows]}, indent=2))
        return 0
    v6 = "" if config.network6 is None else f"  {config.network6} /{config.subnet_len6}"
    print(f"network {config.network}  subnet /{config.subnet_len}{v6}  backend "
          f"{config.backend}")
    ips = {lease.node: " ".join(map(str, lease.underlay_ips)) for lease in rows}
    width = max([16, *(len(v) + 1 for v in ips.values())])
    print(f"{'NODE':20} {'NODE IPS':{width}} SUBNETS")
    for lease in rows:
        print(f"{lease.node:20} {ips[lease.node]:{width}} {' '.join(map(str, lease.subnets))}")
    return 0


def agent_options(args: argparse.Namespace) -> AgentOptions:
    """`podnet agent`'s options from its command line, checked."""
    from podnet.agent.options import AgentOptions

    opts = AgentOptions(node_name=args.node_name, iface=args.iface, node_ip=args.node_ip,
                        cni_conf_dir=args.cni_conf_dir, cni_socket=args.cni_socket,
                        ipam_data_dir=args.ipam_data_dir, state_dir=args.state_dir,
                        ttl=args.ttl, reconcile_interval=args.reconcile_interval,
                        metrics_addr=args.metrics, role=args.role,
                        receive_steering=args.receive_steering)
    opts.check()
    return opts


def _cmd_agent(args: argparse.Namespace) -> int:
    from podnet import malloc
    from podnet.agent.agent import Agent, leave
    from podnet.agent.logs import setup as setup_logs

    opts = agent_options(args)
    store = from_args(args)
    if args.leave:
        for warning in leave(opts, store):
            print(f"podnet agent --leave: {warning}", file=sys.stderr)
        return 0
    setup_logs(args.log_level)
    malloc.steady_footprint()
    agent = Agent(opts, store)
    try:
        return agent.run_forever()
    except UserError:
        raise
    except Exception as exc:
        # A bug or a kernel that refuses: the log has the traceback, the user a line.
        logging.getLogger("podnet.agent").exception("agent failed")
        raise UserError(f"the agent failed: {exc}", "its log above has the details") from None


# Commands whose parsers live in modules of their own, imported only to parse them.
OWN_MODULES = {"lab": ("lab",), "verify": ("verify",), "policy": ("policy", "label")}


def build_parser(command: str | None = None) -> Parser:
    """The whole parser; with `command` (the first word given), the commands of other
    modules left out: the agent's start does not import the lab's parser."""
    from podnet.agent.options import INTERVAL_RANGE, TTL_RANGE
    from podnet.backends import registry
    from podnet.install import DEFAULT_PYTHON, DEFAULT_SOCKET

    parser = Parser(prog="podnet", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("cni-server",
                       help="serve the CNI plugin on a unix socket (the agent embeds one)")
    p.add_argument("--socket", default=DEFAULT_SOCKET,
                   help="the unix socket the installed plugin relays to")
    p.set_defaults(func=_cmd_cni_server)
    p = sub.add_parser("install-cni", help="install the plugin executables (and a conflist)")
    p.add_argument("--bin-dir", required=True,
                   help="where the runtime finds CNI plugins (CNI_PATH), e.g. /opt/cni/bin")
    p.add_argument("--python", default=DEFAULT_PYTHON,
                   help="the host's python3 (3.6 or later) that runs the plugins")
    p.add_argument("--host-root", default="/",
                   help="where the host's file system is seen (an init container's /host): "
                        "--python is looked for there")
    p.add_argument("--conf-dir", help="also write a conflist here (needs --subnet); the agent "
                                      "writes the real one")
    p.add_argument("--subnet", help="the node's pod subnet, for --conf-dir's conflist")
    p.add_argument("--socket", default=DEFAULT_SOCKET,
                   help="the agent's CNI socket, for --conf-dir's conflist")
    p.set_defaults(func=_cmd_install_cni)
    p = sub.add_parser("cni", help="wire or unwire a network namespace as a runtime would")
    csub = p.add_subparsers(dest="cni_command", required=True, parser_class=Parser)
    for verb, text in (("add", "ADD: wire the namespace, print the result"),
                       ("del", "DEL: unwire it")):
        c = csub.add_parser(verb, help=text)
        c.add_argument("--netns", required=True, help="the namespace, e.g. /var/run/netns/pod1")
        c.add_argument("--id", required=True, help="the container ID the runtime would pass")
        c.add_argument("--conflist", default="/etc/cni/net.d/10-podnet.conflist",
                       help="the network configuration list the agent wrote")
        c.add_argument("--cni-path", default="/opt/cni/bin:/usr/lib/cni",
                       help="where the plugins are (podnet's and the reference portmap)")
        c.set_defaults(func=_cmd_cni)
    p = sub.add_parser("cluster", help="the cluster's network config in the datastore")
    csub = p.add_subparsers(dest="cluster_command", required=True, parser_class=Parser)
    c = csub.add_parser("init", help="store the cluster network config")
    add_args(c)
    c.add_argument("--cidr", required=True, action="append",
                   help="the cluster's pod network, e.g. 10.244.0.0/16; again with an IPv6 one "
                        "(e.g. fd00:10:244::/56) for dual-stack; an IPv6 one alone for "
                        "IPv6-only")
    c.add_argument("--subnet-len", type=in_range(int, 1, 30),
                   help="prefix length of each node's share (default /24; l2: /16+8)")
    c.add_argument("--subnet-len-v6", type=in_range(int, 1, 128),
                   help="prefix length of each node's IPv6 share (default /64; an "
                        "IPv6-only cluster's one length)")
    c.add_argument("--backend", required=True, choices=registry.NAMES,
                   help="how the nodes' pod subnets are connected (docs/backends.md)")
    c.add_argument("--force", action="store_true",
                   help="replace a network that nodes still hold leases of")
    c.add_argument("--vni", type=in_range(int, 1, 16777215), help="vxlan: VNI (default 1)")
    c.add_argument("--port", type=in_range(int, 1, 65535),
                   help="vxlan: UDP port (default 8472)")
    c.add_argument("--direct-routing", action="store_true",
                   help="vxlan: route on-link peers directly")
    c.add_argument("--vxlan-tx-checksum-offload", choices=["auto", "on", "off"], default="auto",
                   help="vxlan: auto keeps it on kernels from 5.7 (docs/backends.md)")
    c.add_argument("--gateway-mode", choices=["bgp", "static"],
                   help="gateway: announce over BGP (default) or let `agent --role router` "
                        "route")
    c.add_argument("--ipv6-masquerade", choices=["auto", "on", "off"], default="auto",
                   help="dual-stack: masquerade IPv6 pods leaving the cluster; auto does for a "
                        "unique local network (fc00::/7), not for a global one")
    c.add_argument("--fast-path", choices=["on", "off"], default="on",
                   help="pods of different nodes skip the bridges through eBPF where the "
                        "kernel can (docs/fastpath.md)")
    c.add_argument("--node-credentials", metavar="NODE,NODE,...",
                   help="also make these nodes' own etcd users, as `cluster credentials` does")
    c.add_argument("--credentials-out", metavar="DIR",
                   help="with --node-credentials: write NODE.password here (mode 0600) "
                        "instead of printing them")
    c.set_defaults(func=_cmd_cluster_init)
    c = csub.add_parser("credentials", help="make (or renew) nodes' own etcd users: each may "
                        "read the cluster and write only its own keys (docs/datastore.md)")
    add_args(c)
    c.add_argument("--node", action="append", required=True,
                   help="a node's name (repeat for more); its subnet is assigned now")
    c.add_argument("--out", help="write NODE.password here (mode 0600) instead of printing "
                                 "'NODE USER PASSWORD SUBNET' lines")
    c.set_defaults(func=_cmd_cluster_credentials)
    c = csub.add_parser("show", help="print the config and every lease")
    add_args(c)
    c.add_argument("--json", action="store_true", help="machine-readable: config and leases")
    c.set_defaults(func=_cmd_cluster_show)

    p = sub.add_parser("agent", help="run the node agent")
    add_args(p)
    p.add_argument("--node-name", required=True,
                   help="this node's Kubernetes name (its lease is held under it)")
    p.add_argument("--iface", help="the underlay interface (default: the default route's)")
    p.add_argument("--node-ip", help="the node's IP, or its IPv4 and IPv6 ones as IPV4,IPV6 "
                                     "(default: --iface's first address, and its first "
                                     "reachable IPv6 one beside an IPv4 one)")
    p.add_argument("--cni-conf-dir", default="/etc/cni/net.d",
                   help="where the agent writes the CNI conflist the runtime reads")
    p.add_argument("--cni-socket", default=DEFAULT_SOCKET,
                   help="the unix socket the CNI plugin relays pod ADD/DEL/CHECK to")
    p.add_argument("--ipam-data-dir",
                   help="podnet-ipam's dataDir, the pods' address records (default: "
                        "host-local's, /var/lib/cni/networks)")
    p.add_argument("--state-dir", default="/var/lib/podnet/agent",
                   help="the agent's own state: its lease across restarts, the backend it "
                        "programmed, BIRD's files")
    p.add_argument("--ttl", type=in_range(int, *TTL_RANGE), default=60,
                   help="lease TTL in seconds: how long peers keep a silent node")
    p.add_argument("--reconcile-interval", type=in_range(float, *INTERVAL_RANGE),
                   default=10.0, help="seconds between repairs of drift in the kernel")
    p.add_argument("--metrics", default="127.0.0.1:9153",
                   help="HOST:PORT for /metrics and /healthz; port 0 disables")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="log verbosity")
    p.add_argument("--receive-steering", action="store_true",
                   help="steer what each pod sends by flow over the node's CPUs (RPS on its "
                        "host veth): no flow reordered by the veth, at the price of moving "
                        "packets between CPUs")
    p.add_argument("--role", default="node", choices=["node", "router"],
                   help="router: route every node's pod subnet here (gateway, static mode)")
    p.add_argument("--leave", action="store_true",
                   help="free this node's lease and remove podnet's state from the node, then "
                        "exit (refused while an agent runs here)")
    p.set_defaults(func=_cmd_agent)

    owner = {word: module for module, words in OWN_MODULES.items() for word in words}
    if command in {"cni-server", "install-cni", "cni", "cluster", "agent", "demo"}:
        wanted: set[str] = set()
    else:  # another module's command, or none known (the error lists every command)
        wanted = {owner[command]} if command in owner else set(OWN_MODULES)
    if "lab" in wanted:
        from podnet.lab.cli import add_parser as add_lab

        add_lab(sub)
    if "verify" in wanted:
        from podnet.verify.cli import add_parser as add_verify

        add_verify(sub)
    if "policy" in wanted:
        from podnet.policy.cli import add_parsers as add_policy

        add_policy(sub)

    p = sub.add_parser("demo", help="a 3-node lab, verified and drawn, then taken down")
    p.add_argument("--keep", action="store_true", help="leave the lab up")
    p.add_argument("--backend", default="vxlan", choices=registry.NAMES,
                   help="the lab's backend")
    p.set_defaults(func=_cmd_demo)
    return parser


def _command(argv: list[str]) -> str:
    """The words of the command for messages: 'lab down', 'cluster init', 'agent'."""
    words = [a for a in argv if not a.startswith("-")][:2]
    nested = {"lab", "cluster", "cni", "policy", "label"}
    return " ".join(words if words[:1] and words[0] in nested else words[:1]) or "podnet"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv and "CNI_COMMAND" in os.environ:
        # Exec'd by a runtime under this name: behave as the plugin.
        from podnet.cni.shim import main as plugin_main

        plugin_main("podnet")
    first = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(first).parse_args(argv)
    if args.debug:
        rc: int = args.func(args)
        return rc
    from podnet.datastore.base import DatastoreError, PermissionDenied

    name = f"podnet {_command(argv)}"
    try:
        rc = args.func(args)
    except UserError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except PermissionDenied as exc:
        print(f"{name}: {exc} (check --etcd-user and --etcd-password-file; `podnet cluster "
              "credentials` makes a node's)", file=sys.stderr)
        return 1
    except DatastoreError as exc:
        print(f"{name}: {exc} (check --etcd and that etcd runs)", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{name}: {exc.strerror or exc}{where} (check the path and its permissions)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print(f"{name}: unexpected error: {exc!r} (run again with --debug for the traceback, "
              "and report it)", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
