"""`podnet lab ...` subcommands."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from podnet.backends import registry
from podnet.cni.errors import CNIError
from podnet.errors import UserError
from podnet.lab.topology import (
    IP_FAMILIES,
    MAX_ETCD_MEMBERS,
    MAX_NODES,
    MAX_PODS_PER_NODE,
    UNDERLAY_FAMILIES,
    Topology,
    check_lab_name,
)

if TYPE_CHECKING:
    from podnet.cli import Parser


def _progress(start: float) -> Callable[[str], None]:
    def say(msg: str) -> None:
        print(f"[{time.monotonic() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


def _table(st: dict[str, Any]) -> str:
    w = max([16, *(len(n["node_ip"]) + 1 for n in st["nodes"])])
    lines = [f"lab {st['name']}: backend {st['backend']}, underlay {st['underlay']}, "
             f"etcd {st['etcd']['url']} (netns {st['etcd']['netns']})", "",
             f"{'NODE':10} {'NODE IP':{w}} {'AGENT PID':10} POD SUBNETS"]
    for n in st["nodes"]:
        lines.append(f"{n['name']:10} {n['node_ip']:{w}} {n['agent_pid']:<10} "
                     f"{' '.join(n['pod_subnets'])}")
    lines += ["", f"{'POD':14} {'NODE':10} IPS"]
    for p in st["pods"]:
        lines.append(f"{p['name']:14} {p['node']:10} {' '.join(p['ips'])}")
    return "\n".join(lines)


def lab_name_arg(text: str) -> str:
    """argparse type of every --name/--lab: the lab name rule."""
    try:
        return check_lab_name(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd(args: argparse.Namespace) -> int:
    say = _progress(time.monotonic())
    try:
        return _dispatch(args, say)
    except CNIError as exc:
        raise UserError(f"the CNI plugin failed: {exc.msg}", exc.details or
                        "see the node's agent.log in the lab's directory") from None


def _output_path(path: str) -> str:
    """A diagram's output file, checked before anything is drawn."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".png", ".svg"):
        raise UserError(f"cannot draw {path!r}", "name a .png or .svg file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"the directory {parent} does not exist", "create it or choose another")
    if not os.access(parent, os.W_OK) or os.path.isdir(path):
        raise UserError(f"cannot write {path}", "choose a file in a directory you can write")
    return path


def _dispatch(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    # Here, not at the top: every command builds this parser (the agent's start among them).
    from podnet.lab.lab import Lab, names, status

    if args.lab_command == "up":
        underlay = "routed" if registry.spec(args.backend).routed_by_gateway else args.underlay
        topo = Topology.make(args.name, args.backend, args.nodes, args.pods_per_node, underlay)
        topo.gateway_mode = args.gateway_mode
        topo.fast_path = args.fast_path == "on"
        topo.etcd_tls = args.etcd_tls or bool(args.agent_image)
        topo.etcd_members = args.etcd_members
        topo.etcd_auth = args.etcd_auth
        topo.ip_family = args.ip_family
        topo.underlay_family = args.underlay_family
        topo.agent_image = args.agent_image or ""
        lab = Lab(topo, say)
        lab.up()  # on failure it removes what it built, and nothing else
        print(_table(status(lab)))
        return 0
    if args.lab_command == "list":
        for name in names():
            print(name)
        return 0
    if args.lab_command == "down":
        Lab.load(args.name, say).teardown()
        return 0
    lab = Lab.load(args.name, say)
    if args.lab_command == "status":
        st = status(lab)
        print(json.dumps(st, indent=2) if args.json else _table(st))
    elif args.lab_command == "add-node":
        node = lab.add_node()
        for _ in range(args.pods):
            lab.add_pod(node.name)
        print(node.name)
    elif args.lab_command == "remove-node":
        lab.remove_node(args.node)
    elif args.lab_command == "add-pod":
        print(lab.add_pod(args.node, args.namespace, args.pod_name,
                          _labels(args.labels)).name)
    elif args.lab_command == "restart-agent":
        lab.restart_agent(args.node)
    elif args.lab_command == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            raise UserError("no command to run", "give one after --, e.g. -- ip route")
        path = lab.target_netns(args.target)
        return subprocess.call(["nsenter", f"--net={path}", *argv])
    elif args.lab_command == "diagram":
        from podnet.lab.diagram import draw

        print(draw(lab, _output_path(args.output)))
    return 0


def _labels(text: str) -> dict[str, str]:
    """--labels k=v,k2=v2 (validated with the pod)."""
    out = {}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"--labels item {item[:80]!r} is not KEY=VALUE",
                            "give k=v,k2=v2")
        out[key] = value
    return out


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    from podnet.cli import Parser, in_range

    p = sub.add_parser("lab", help="a whole cluster on this machine, in namespaces")
    lsub = p.add_subparsers(dest="lab_command", required=True, parser_class=Parser)

    def named(name: str, text: str) -> argparse.ArgumentParser:
        q = lsub.add_parser(name, help=text)
        q.add_argument("--name", type=lab_name_arg, default=os.environ.get("PODNET_LAB", "lab"),
                       help="the lab's name (default: $PODNET_LAB, else lab)")
        q.set_defaults(func=cmd)
        return q

    q = named("up", "build a lab")
    q.add_argument("--nodes", type=in_range(int, 1, MAX_NODES), default=3,
                   help="how many nodes")
    q.add_argument("--pods-per-node", type=in_range(int, 0, MAX_PODS_PER_NODE), default=2,
                   help="pods wired on each node")
    q.add_argument("--backend", default="vxlan", choices=registry.NAMES,
                   help="the cluster's backend")
    q.add_argument("--underlay", default="switch", choices=["switch", "routed"],
                   help="the nodes on one switch, or each on its own subnet behind a router "
                        "(a backend routed by the nodes' gateway always builds a routed one)")
    q.add_argument("--gateway-mode", default="bgp", choices=["bgp", "static"],
                   help="gateway: BIRD on the router, or `agent --role router`")
    q.add_argument("--fast-path", default="on", choices=["on", "off"],
                   help="the eBPF fast path between pods of different nodes")
    q.add_argument("--etcd-members", type=in_range(int, 1, MAX_ETCD_MEMBERS), default=1,
                   help="etcd's members, each in a namespace of its own (switch underlay)")
    q.add_argument("--etcd-tls", action="store_true",
                   help="etcd with TLS and client certificates (a CA of the lab's own)")
    q.add_argument("--ip-family", default="ipv4", choices=IP_FAMILIES,
                   help="the pods' address families: dual gives each pod an IPv6 address "
                        "beside its IPv4 one, ipv6 an IPv6 one alone (l2, host-gw, vxlan)")
    q.add_argument("--underlay-family", default="ipv4", choices=UNDERLAY_FAMILIES,
                   help="the nodes' and etcd's addresses: ipv6 makes the switch IPv6-only "
                        "(l2, host-gw, vxlan; pods of either family ride it)")
    q.add_argument("--etcd-auth", action="store_true",
                   help="etcd's authentication on: each node's agent with its own user, which "
                        "writes only its own keys (`podnet cluster credentials`)")
    q.add_argument("--agent-image", metavar="IMAGE",
                   help="run each agent from this image as deploy/kubernetes/podnet.yaml's "
                        "DaemonSet runs it (podman; implies --etcd-tls), e.g. "
                        "localhost/podnet:0.1.0 from `make image`")
    q = lsub.add_parser("list", help="the labs on this machine")
    q.set_defaults(func=cmd)
    named("down", "remove a lab (also a half-built one) as its state records it")
    q = named("status", "what the lab holds")
    q.add_argument("--json", action="store_true", help="machine-readable")
    q = named("add-node", "add a node (with pods)")
    q.add_argument("--pods", type=in_range(int, 0, MAX_PODS_PER_NODE), default=0,
                   help="pods to wire on it")
    q = named("remove-node", "remove a node and its pods")
    q.add_argument("node", help="the node's name, e.g. node2")
    q = named("add-pod", "add a pod to a node")
    q.add_argument("node", help="the node's name, e.g. node1")
    q.add_argument("--namespace", default="default", help="its Kubernetes namespace")
    q.add_argument("--pod-name", default="", help="its name in the namespace (default: the "
                                                  "lab's, e.g. node1-p3)")
    q.add_argument("--labels", default="", help="k=v,k2=v2: its labels, stored before it is "
                                                "wired")
    q = named("restart-agent", "restart a node's agent")
    q.add_argument("node", help="the node's name, e.g. node1")
    q = named("exec", "run a command in a node's, pod's or cp/sw/rt namespace")
    q.add_argument("target", help="a node, a pod, or cp, sw, rt")
    q.add_argument("argv", nargs=argparse.REMAINDER, help="-- and the command")
    q = named("diagram", "draw the live topology")
    q.add_argument("-o", "--output", required=True, help="FILE.svg or FILE.png")
