"""`podnet lab ...` subcommands."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

from podnet.cni.errors import CNIError
from podnet.lab.lab import Lab, down, status
from podnet.lab.topology import Topology


def _progress(start: float) -> Callable[[str], None]:
    def say(msg: str) -> None:
        print(f"[{time.monotonic() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


def _table(st: dict[str, object]) -> str:
    lines = [f"lab {st['name']}: backend {st['backend']}, underlay {st['underlay']}, "
             f"etcd {st['etcd']}", "",
             f"{'NODE':10} {'NODE IP':16} {'POD SUBNET':28} AGENT PID"]
    for n in st["nodes"]:  # type: ignore[attr-defined]
        lines.append(f"{n['name']:10} {n['node_ip']:16} {n['pod_subnet']:28} {n['agent_pid']}")
    lines += ["", f"{'POD':14} {'NODE':10} IP"]
    for p in st["pods"]:  # type: ignore[attr-defined]
        lines.append(f"{p['name']:14} {p['node']:10} {p['ip']}")
    return "\n".join(lines)


def cmd(args: argparse.Namespace) -> int:
    say = _progress(time.monotonic())
    try:
        return _dispatch(args, say)
    except (KeyError, ValueError, RuntimeError, CNIError) as exc:
        print(f"podnet lab {args.lab_command}: {exc.args[0] if exc.args else exc}",
              file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    if args.lab_command == "up":
        underlay = "routed" if args.backend == "gateway" else args.underlay
        topo = Topology.make(args.name, args.backend, args.nodes, args.pods_per_node, underlay)
        topo.gateway_mode = args.gateway_mode
        topo.fast_path = args.fast_path == "on"
        lab = Lab(topo, say)
        try:
            lab.up()
        except BaseException:
            say("build failed: removing what was built")
            down(args.name)
            raise
        print(_table(status(lab)))
        return 0
    if args.lab_command == "down":
        down(args.name, say)
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
        print(lab.add_pod(args.node).name)
    elif args.lab_command == "restart-agent":
        lab.restart_agent(args.node)
    elif args.lab_command == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            raise ValueError("give a command after --")
        path = lab.target_netns(args.target)
        return subprocess.call(["nsenter", f"--net={path}", *argv])
    elif args.lab_command == "diagram":
        from podnet.lab.diagram import draw

        print(draw(lab, args.output))
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("lab", help="a whole cluster on this machine, in namespaces")
    lsub = p.add_subparsers(dest="lab_command", required=True)

    def named(name: str, text: str) -> argparse.ArgumentParser:
        q = lsub.add_parser(name, help=text)
        q.add_argument("--name", default=os.environ.get("PODNET_LAB", "lab"))
        q.set_defaults(func=cmd)
        return q

    q = named("up", "build a lab")
    q.add_argument("--nodes", type=int, default=3)
    q.add_argument("--pods-per-node", type=int, default=2)
    q.add_argument("--backend", default="vxlan", choices=["l2", "host-gw", "gateway", "vxlan"])
    q.add_argument("--underlay", default="switch", choices=["switch", "routed"],
                   help="gateway always builds a routed underlay")
    q.add_argument("--gateway-mode", default="bgp", choices=["bgp", "static"])
    q.add_argument("--fast-path", default="on", choices=["on", "off"],
                   help="the eBPF fast path between pods of different nodes")
    named("down", "remove a lab (also a half-built one)")
    q = named("status", "what the lab holds")
    q.add_argument("--json", action="store_true")
    q = named("add-node", "add a node (with pods)")
    q.add_argument("--pods", type=int, default=0)
    q = named("remove-node", "remove a node and its pods")
    q.add_argument("node")
    q = named("add-pod", "add a pod to a node")
    q.add_argument("node")
    q = named("restart-agent", "restart a node's agent")
    q.add_argument("node")
    q = named("exec", "run a command in a node's, pod's or cp/sw/rt namespace")
    q.add_argument("target")
    q.add_argument("argv", nargs=argparse.REMAINDER)
    q = named("diagram", "draw the live topology")
    q.add_argument("-o", "--output", required=True, help="FILE.svg or FILE.png")
