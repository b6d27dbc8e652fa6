"""Building, changing and removing a lab from its topology. State lives in
/run/podnet/labs/<name>.json, claimed before anything is built; every namespace is recorded
there before it is made, so `down` (and a failed `up`) removes exactly what the lab made, also
after a crash, and never another lab's namespaces whose names merely look alike."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podnet.backends import registry
from podnet.cni.invoke import Runtime
from podnet.errors import UserError
from podnet.fsutil import write_atomic
from podnet.install import install_cni
from podnet.lab import pki
from podnet.lab.topology import (
    CONTROL_NET,
    ETCD_PORT,
    NAME_RE,
    NodeSpec,
    PodSpec,
    Topology,
    check_lab_name,
)
from podnet.netlink import links, netns, sysfs

LABS_DIR = "/run/podnet/labs"
REFERENCE_PLUGINS = "/usr/lib/cni"
METRICS_URL = "http://127.0.0.1:9153/metrics"  # a node agent's default --metrics, in its netns
Progress = Callable[[str], None]
if TYPE_CHECKING:
    from podnet.datastore.etcd import EtcdStore


def _quiet(_msg: str) -> None:
    pass


def lab_dir(name: str) -> str:
    return os.path.join(LABS_DIR, check_lab_name(name))


def state_path(name: str) -> str:
    return os.path.join(LABS_DIR, f"{check_lab_name(name)}.json")


def names() -> list[str]:
    """The labs this machine has state of."""
    try:
        found = [f[:-5] for f in os.listdir(LABS_DIR) if f.endswith(".json")]
    except FileNotFoundError:
        return []
    return sorted(n for n in found if NAME_RE.fullmatch(n))


def ns_path(name: str) -> str:
    return os.path.join(netns.NETNS_DIR, name)


def _default(address: str) -> str:
    """The default route's destination in the family of `address`."""
    return "::/0" if ":" in address else "0.0.0.0/0"


def _veth(outer_ns: str, outer_name: str, inner_ns: str, inner_name: str, address: str | None,
          steer: bool, mtu: int = 1500) -> None:
    """A veth from one namespace into another, both ends up, `address` on the inner end. With
    `steer` each end steers what it receives by flow over the CPUs, as a NIC's receive queues
    do (RSS; a veth otherwise reorders a flow, podnet.netlink.sysfs)."""
    ipr = netns.iproute_in(ns_path(outer_ns))
    try:
        ipr.link("add", ifname=outer_name, kind="veth", mtu=mtu,
                 peer={"ifname": inner_name, "net_ns_fd": ns_path(inner_ns), "mtu": mtu})
        ipr.link("set", index=links.index_of(ipr, outer_name), state="up")
    finally:
        ipr.close()
    inner = netns.iproute_in(ns_path(inner_ns))
    try:
        index = links.index_of(inner, inner_name)
        assert index is not None
        if address:
            links.add_address(inner, index, address)
        inner.link("set", index=index, state="up")
    finally:
        inner.close()
    if not steer:
        return
    for ns, name in ((outer_ns, outer_name), (inner_ns, inner_name)):
        with netns.entered(ns_path(ns)):
            fs = sysfs.Sysfs()
        try:
            fs.set_rps(name, sysfs.all_cpus())
        finally:
            fs.close()


def _in_ns(ns: str, fn: Callable[[Any], object]) -> None:
    ipr = netns.iproute_in(ns_path(ns))
    try:
        fn(ipr)
    finally:
        ipr.close()


def _index(ipr: Any, name: str) -> int:
    index = links.index_of(ipr, name)
    if index is None:
        raise UserError(f"interface {name} is missing", "the lab was changed by hand: down and "
                        "up again")
    return index


def _spawn(ns: str, argv: list[str], log: str, env: dict[str, str] | None = None) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(["nsenter", f"--net={ns_path(ns)}", *argv], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    return proc.pid


def _alive(pid: int) -> bool:
    """Whether a process runs (our exited children are reaped, not counted as alive)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return os.path.exists(f"/proc/{pid}")


def _kill(pid: int, timeout: float = 10.0, ns: str | None = None) -> None:
    """Stop a process (SIGTERM, then SIGKILL); with `ns`, only if it runs in that namespace of
    ours: a recorded pid may since belong to someone else."""
    if pid <= 0:
        return
    if ns is not None:
        try:
            if netns.ns_id(f"/proc/{pid}/ns/net") != netns.ns_id(ns_path(ns)):
                return
        except OSError:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # our exited child: reap it
            return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            # Not our child (a later command): poll for its exit.
            if not os.path.exists(f"/proc/{pid}"):
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


class Lab:
    def __init__(self, topo: Topology, progress: Progress = _quiet) -> None:
        self.topo = topo
        self.progress = progress
        self.dir = lab_dir(topo.name)

    # -- persistence -------------------------------------------------------------------------
    @classmethod
    def load(cls, name: str, progress: Progress = _quiet) -> Lab:
        path = state_path(name)
        try:
            with open(path) as fh:
                topo = Topology.from_dict(json.load(fh))
        except FileNotFoundError:
            raise UserError(f"no lab named {name!r} is up",
                            f"labs: {', '.join(names()) or 'none'}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"the state of lab {name!r} ({path}) is unreadable: {exc}",
                            "remove the lab's namespaces (ip netns) and that file by hand"
                            ) from None
        if topo.name != name:
            raise UserError(f"the state file {path} is of lab {topo.name!r}",
                            "remove that file by hand")
        return cls(topo, progress)

    def save(self) -> None:
        path = state_path(self.topo.name)
        with open(path + ".tmp", "w") as fh:
            json.dump(self.topo.to_dict(), fh, indent=1)
        os.replace(path + ".tmp", path)

    @property
    def prefix(self) -> str:
        return self.topo.netns_prefix

    def _podnet(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "podnet", *args]

    @property
    def certs(self) -> pki.Certs | None:
        """etcd's certificates, where the lab runs it with TLS."""
        if not self.topo.etcd_tls:
            return None
        d = os.path.join(self.dir, "pki")
        return pki.Certs(*(os.path.join(d, f) for f in (
            "ca.crt", "server.crt", "server.key", "client.crt", "client.key")))

    def etcd_args(self, node: NodeSpec | None = None) -> list[str]:
        """What a podnet command needs to reach the lab's etcd: as root where etcd has
        authentication on, or with `node`, as that node's own user."""
        auth: list[str] = []
        if self.topo.etcd_auth and node is None:
            auth = ["--etcd-user", "root", "--etcd-password-file", self.root_password]
        elif self.topo.etcd_auth and node is not None:
            from podnet.datastore.credentials import user_of

            auth = ["--etcd-user", user_of(node.name), "--etcd-password-file",
                    self.node_password(node)]
        return [*self._etcd_reach(), *auth]

    def _etcd_reach(self) -> list[str]:
        """The URL and TLS files, without a user."""
        c = self.certs
        tls = [] if c is None else ["--etcd-ca", c.ca, "--etcd-cert", c.client_cert,
                                    "--etcd-key", c.client_key]
        return ["--etcd", self.topo.etcd_url, *tls]

    def etcd_store(self, node: NodeSpec | None = None,
                   authenticated: bool = True) -> EtcdStore:
        """The lab's etcd opened as a command given etcd_args() opens it (without a user:
        before authentication is on); use it inside etcd's namespace."""
        import argparse

        from podnet.datastore.args import add_args, from_args
        from podnet.datastore.etcd import EtcdStore

        parser = argparse.ArgumentParser()
        add_args(parser)
        store = from_args(parser.parse_args(
            self.etcd_args(node) if authenticated else self._etcd_reach()))
        assert isinstance(store, EtcdStore)
        return store

    @property
    def root_password(self) -> str:
        return os.path.join(self.dir, "etcd-root.password")

    @property
    def users_dir(self) -> str:
        """Where the nodes' etcd passwords are written (the operator's --out)."""
        return os.path.join(self.dir, "etcd-users")

    def node_password(self, node: NodeSpec) -> str:
        return os.path.join(self.users_dir, f"{node.name}.password")

    def _node_credentials(self, node: NodeSpec) -> None:
        """The node's etcd user, as an operator makes it for a node that joins (the first
        nodes' are made by `cluster init --node-credentials`)."""
        if os.path.exists(self.node_password(node)):
            return
        self._run_in(self.prefix + "cp", self._podnet(
            "cluster", "credentials", *self.etcd_args(), "--node", node.name, "--out",
            self.users_dir))

    def _enable_auth(self) -> None:
        """etcd's root user, with a password of the lab's, and authentication on."""
        import secrets

        password = secrets.token_urlsafe(24)
        write_atomic(self.root_password, password + "\n", 0o600)
        with netns.entered(ns_path(self.prefix + "cp")):
            store = self.etcd_store(authenticated=False)
            try:
                store.enable_auth(password)
            finally:
                store.close()

    def new_ns(self, name: str) -> None:
        """A namespace of the lab, recorded first (a crash leaves nothing unrecorded), its
        loopback up (etcd and echo servers use it)."""
        self.topo.netns_made.append(name)
        self.save()
        try:
            netns.create(name)
        except FileExistsError:
            # Someone else's: never ours to remove.
            self.topo.netns_made.remove(name)
            self.save()
            raise UserError(f"network namespace {name} exists already, not made by this lab",
                            "remove it, or choose another lab name") from None
        _in_ns(name, lambda ipr: ipr.link("set", index=_index(ipr, "lo"), state="up"))
        with netns.entered(ns_path(name)):
            # Links made here skip duplicate address detection: until a link's link-local
            # address passes it (a second), the kernel sends no neighbour solicitation for a
            # packet it forwards, and a new lab's first IPv6-underlay packets would wait.
            netns.write_sysctl("net/ipv6/conf/default/accept_dad", "0")

    def _forget_ns(self, name: str) -> None:
        """Remove one of the lab's namespaces and whatever still runs in it (a process would
        keep it alive, unnamed)."""
        if os.path.exists(ns_path(name)):
            for pid in netns.pids_in(ns_path(name)):
                _kill(pid, timeout=5)
        netns.remove(name)
        if name in self.topo.netns_made:
            self.topo.netns_made.remove(name)

    # -- up -----------------------------------------------------------------------------------
    def up(self) -> None:
        """Build the lab; on any failure remove what this call built, and only that."""
        t = self.topo
        t.check()
        exists = UserError(f"lab {t.name!r} exists already",
                           f"`podnet lab down --name {t.name}` first")
        if os.path.exists(state_path(t.name)):
            raise exists
        taken = [ns for ns in t.namespaces() if os.path.exists(ns_path(ns))]
        if taken:
            raise UserError(f"network namespaces of lab {t.name!r} exist already: "
                            f"{', '.join(taken)}", f"`podnet lab down --name {t.name}` first")
        os.makedirs(LABS_DIR, exist_ok=True)
        try:
            # The claim: exclusive creation, so two `up`s of one name cannot both go on.
            fd = os.open(state_path(t.name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise exists from None
        with os.fdopen(fd, "w") as fh:
            json.dump(t.to_dict(), fh, indent=1)
        try:
            os.makedirs(self.dir, exist_ok=False)
            self._build()
        except BaseException:
            self.progress("build failed: removing what was built")
            self.teardown()
            raise

    def _build(self) -> None:
        t = self.topo
        install_cni(os.path.join(self.dir, "bin"))
        self._underlay()
        self._etcd()
        self.progress(f"cluster init: {', '.join(t.cidrs)}, backend {t.backend}")
        routed = registry.spec(t.backend).routed_by_gateway
        extra = ["--gateway-mode", t.gateway_mode] if routed else []
        if not t.fast_path:
            extra += ["--fast-path", "off"]
        if t.etcd_auth and t.nodes:
            os.makedirs(self.users_dir, mode=0o700, exist_ok=True)
            extra += ["--node-credentials", ",".join(n.name for n in t.nodes),
                      "--credentials-out", self.users_dir]
        self._run_in(self.prefix + "cp", self._podnet(
            "cluster", "init", *self.etcd_args(), *(a for c in t.cidrs for a in ("--cidr", c)),
            "--backend", t.backend, *extra))
        if routed:
            self._router()
        for node in t.nodes:
            self._node(node)
        for node in t.nodes:
            self._wait_agent(node)
        if routed:
            self._wait(self._router_knows_all, 30, "the router did not learn every pod subnet")
        self._wait(self._agents_know_all, 30, "the agents did not learn every node's lease")
        for pod in t.pods:
            self._pod(pod)
        self.save()

    def _run_in(self, ns: str, argv: list[str], env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(["nsenter", f"--net={ns_path(ns)}", *argv], capture_output=True,
                              text=True, check=False, timeout=120, env=env)
        if proc.returncode != 0:
            raise UserError(f"{' '.join(argv[2:5])} failed in {ns}: {proc.stderr.strip()}",
                            "the message says why")
        return proc.stdout

    def _underlay(self) -> None:
        t = self.topo
        cp = self.prefix + "cp"
        if t.underlay == "switch":
            sw = self.prefix + "sw"
            self.progress("underlay: switch")
            self.new_ns(sw)

            def make_bridge(ipr: Any) -> None:
                ipr.link("add", ifname="br0", kind="bridge")
                ipr.link("set", index=links.index_of(ipr, "br0"), state="up")

            _in_ns(sw, make_bridge)
            for member in t.etcd_names:
                self.new_ns(self.prefix + member)
                _veth(sw, member, self.prefix + member, "eth0",
                      f"{t.etcd_member_ip(member)}/{t.switch_net.prefixlen}",
                      t.receive_steering)
                self._attach(sw, member)
        else:
            rt = self.prefix + "rt"
            self.progress("underlay: router")
            self.new_ns(rt)
            self.new_ns(cp)
            prefix = t.control_net.prefixlen
            _veth(cp, "eth0", rt, "cp", f"{t.control_router}/{prefix}", t.receive_steering)
            _in_ns(cp, lambda ipr: links.add_address(ipr, _index(ipr, "eth0"),
                                                     f"{t.etcd_ip}/{prefix}"))
            _in_ns(cp, lambda ipr: ipr.route("replace", dst=_default(t.control_router),
                                             gateway=t.control_router))
            with netns.entered(ns_path(rt)):
                netns.write_sysctl("net/ipv4/ip_forward", "1")
                if t.routed_ipv6 or t.underlay_family == "ipv6":
                    netns.write_sysctl("net/ipv6/conf/all/forwarding", "1")

    def _router(self) -> None:
        """The nodes' default gateway learns the pod subnets: BIRD over BGP, or a podnet agent
        in the router role (static mode)."""
        from podnet.backends.gateway import bird_paths, bird_pid, router_bird_config

        t = self.topo
        rt = self.prefix + "rt"
        d = os.path.join(self.dir, "router")
        os.makedirs(d, exist_ok=True)
        if t.gateway_mode == "bgp":
            self.progress("router: BIRD, learning pod subnets over BGP")
            conf, ctl, pidfile = bird_paths(d)
            with open(conf, "w") as fh:
                # Its ID is a number: the IPv4 control address, whichever the underlay.
                fh.write(router_bird_config(str(CONTROL_NET.network_address + 1),
                                            t.router_sessions, 64512, 64513))
            self._run_in(rt, ["bird", "-c", conf, "-s", ctl, "-P", pidfile])
            # BIRD creates its pid file before it writes the pid: wait for a live pid in it.
            self._wait(lambda: bird_pid(d) is not None, 10, "BIRD did not start on the router")
            t.router_pid = bird_pid(d) or 0
        else:
            self.progress("router: podnet agent --role router")
            t.router_pid = _spawn(rt, self._podnet(
                "agent", "--role", "router", *self.etcd_args(), "--node-name", "router",
                "--node-ip", t.control_router, "--state-dir", os.path.join(d, "state"),
                "--reconcile-interval", str(t.reconcile_interval), "--metrics",
                "127.0.0.1:0"), os.path.join(d, "agent.log"))
        self.save()

    def _router_knows_all(self) -> bool:
        import ipaddress

        subnets = {ipaddress.ip_network(r["subnet"]) for node in self.topo.nodes
                   for r in self.ipam_ranges(node)}
        ipr = netns.iproute_in(ns_path(self.prefix + "rt"))
        try:
            have = {ipaddress.ip_network(f"{r.get_attr('RTA_DST')}/{r['dst_len']}")
                    for family in (socket.AF_INET, socket.AF_INET6)
                    for r in ipr.get_routes(family=family, table=254) if r.get_attr("RTA_DST")}
        finally:
            ipr.close()
        return subnets <= have

    def _attach(self, sw: str, port: str) -> None:
        def attach(ipr: Any) -> None:
            ipr.link("set", index=links.index_of(ipr, port), master=links.index_of(ipr, "br0"))

        _in_ns(sw, attach)

    def _etcd(self) -> None:
        """Every member of the lab's etcd, started and answering."""
        t = self.topo
        self.progress(f"etcd at {t.etcd_url}")
        for member in t.etcd_names:
            self.start_etcd_member(member)
        self._wait(self._etcd_ready, 30, "etcd did not start")
        if t.etcd_auth:
            self.progress("etcd: authentication on (root, and a user per node)")
            self._enable_auth()

    def start_etcd_member(self, member: str) -> None:
        """One member, started (anew, or again on its data after a kill)."""
        t = self.topo
        tls: list[str] = []
        if (c := self.certs) is not None:
            if not os.path.exists(c.ca):  # made once: a restarted etcd keeps its CA
                c = pki.make_certs(Path(self.dir) / "pki",
                                   [t.etcd_member_ip(m) for m in t.etcd_names])
            tls = ["--cert-file", c.server_cert, "--key-file", c.server_key,
                   "--client-cert-auth", "--trusted-ca-file", c.ca]
        url, peer = t.etcd_member_url(member), t.etcd_member_url(member, 2380, "http")
        cluster = ",".join(f"{m}={t.etcd_member_url(m, 2380, 'http')}" for m in t.etcd_names)
        t.etcd_pids[member] = _spawn(self.prefix + member, [
            "etcd", "--name", member, "--data-dir", os.path.join(self.dir, "etcd", member),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", cluster, *tls],
            os.path.join(self.dir, f"etcd-{member}.log"))
        self.save()

    def kill_etcd_member(self, member: str) -> None:
        """SIGKILL, as a crash: the member's data stays for a restart."""
        pid = self.topo.etcd_pids.get(member, 0)
        with contextlib.suppress(ProcessLookupError):
            if pid and netns.ns_id(f"/proc/{pid}/ns/net") == netns.ns_id(
                    ns_path(self.prefix + member)):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        self.topo.etcd_pids[member] = 0
        self.save()

    def _etcd_ready(self) -> bool:
        for member in self.topo.etcd_names:
            ip = self.topo.etcd_member_ip(member)
            with netns.entered(ns_path(self.prefix + member)):
                sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
            with sock:
                sock.settimeout(0.5)
                if sock.connect_ex((ip, ETCD_PORT)) != 0:
                    return False
        return True

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise UserError(what, f"the logs in {self.dir} say why")
            time.sleep(0.1)

    def node_dir(self, node: NodeSpec) -> str:
        return os.path.join(self.dir, node.name)

    def _node(self, node: NodeSpec, start_agent: bool = True) -> None:
        t = self.topo
        ns = node.netns(t.name)
        self.progress(f"node {node.name}: {t.node_ip(node)}")
        self.new_ns(ns)
        prefix = t.node_net(node).prefixlen
        with netns.entered(ns_path(ns)):
            # As kubeadm requires of a node; an agent in a container cannot set it.
            netns.write_sysctl("net/ipv4/ip_forward", "1")
        if t.underlay == "switch":
            _veth(self.prefix + "sw", node.name, ns, "eth0", f"{t.node_ip(node)}/{prefix}",
                  t.receive_steering)
            self._attach(self.prefix + "sw", node.name)
            if t.agent_image:
                # The DaemonSet's agent finds its underlay by the default route; nothing
                # answers at this address, so nothing leaves the switch.
                _in_ns(ns, lambda ipr: ipr.route(
                    "replace", dst=_default(t.switch_gateway),
                    gateway=t.switch_gateway))
        else:
            rt = self.prefix + "rt"
            _veth(ns, "eth0", rt, node.name, f"{t.gateway(node)}/{prefix}", t.receive_steering)
            _in_ns(ns, lambda ipr: links.add_address(ipr, _index(ipr, "eth0"),
                                                     f"{t.node_ip(node)}/{prefix}"))
            _in_ns(ns, lambda ipr: ipr.route("replace", dst=_default(t.node_ip(node)),
                                             gateway=t.gateway(node)))
            if t.routed_ipv6:  # the link carries IPv6 too: an address and a default route
                net6 = t.node_net6(node)
                _in_ns(rt, lambda ipr: links.add_address(ipr, _index(ipr, node.name),
                                                         f"{net6.network_address + 1}/64"))
                _in_ns(ns, lambda ipr: links.add_address(ipr, _index(ipr, "eth0"),
                                                         f"{net6.network_address + 2}/64"))
                _in_ns(ns, lambda ipr: ipr.route("replace", dst="::/0",
                                                 gateway=str(net6.network_address + 1)))
        if t.etcd_auth:
            self._node_credentials(node)
        if start_agent:
            self.start_agent(node)

    def node_root(self, node: NodeSpec) -> str:
        """Where an agent from the image keeps the node's files (its hostPath volumes)."""
        return os.path.join(self.node_dir(node), "host")

    def _node_file(self, node: NodeSpec, image_path: str, own: str) -> str:
        if self.topo.agent_image:
            return os.path.join(self.node_root(node), image_path.lstrip("/"))
        return os.path.join(self.node_dir(node), own)

    def socket(self, node: NodeSpec) -> str:
        return self._node_file(node, "/run/podnet/cni.sock", "cni.sock")

    def conf_dir(self, node: NodeSpec) -> str:
        return self._node_file(node, "/etc/cni/net.d", "net.d")

    def state_dir(self, node: NodeSpec) -> str:
        return self._node_file(node, "/var/lib/podnet/agent", "state")

    def start_agent(self, node: NodeSpec) -> None:
        if self.topo.agent_image:
            self._start_agent_image(node)
            return
        d = self.node_dir(node)
        os.makedirs(d, exist_ok=True)
        node.agent_pid = _spawn(node.netns(self.topo.name), self._podnet(
            "agent", *self.etcd_args(node), "--node-name", node.name, "--iface", "eth0",
            "--cni-conf-dir", os.path.join(d, "net.d"), "--cni-socket",
            os.path.join(d, "cni.sock"), "--ipam-data-dir", os.path.join(d, "ipam"),
            "--state-dir", os.path.join(d, "state"),
            "--reconcile-interval", str(self.topo.reconcile_interval),
            "--ttl", "15", *(["--receive-steering"] if self.topo.receive_steering else [])),
            os.path.join(d, "agent.log"),
            {**os.environ, "PYTHONPATH": node.agent_src} if node.agent_src else None)
        self.save()

    def _start_agent_image(self, node: NodeSpec) -> None:
        """The node's agent as the DaemonSet runs it: the init container installs the plugins,
        the agent container runs with the manifest's capabilities, mounts and environment."""
        from podnet.lab import daemonset

        t, d, ns = self.topo, self.node_dir(node), node.netns(self.topo.name)
        spec = daemonset.pod_spec()
        init, agent = ({**c, "image": t.agent_image}
                       for c in (spec["initContainers"][0], spec["containers"][0]))
        root = self.node_root(node)
        volumes = {name: os.path.join(root, path.lstrip("/"))
                   for name, path in daemonset.host_paths(spec).items()}
        for path in volumes.values():  # the node's own directories, in the lab's
            os.makedirs(path, exist_ok=True)
        volumes["host-python"] = "/usr/bin"  # the host's own python3, as a node's
        volumes["netns"] = "/run/netns"  # where the lab's pods' namespaces are
        volumes["etcd-certs"] = self._etcd_secret(d)
        env = daemonset.containers_conf(self.dir)
        if not _alive(node.mounts_pid):
            # The node's view of /run/podnet, where its plugins find the agent's socket; the
            # labs' own directory under it stays in view (bound in this namespace only).
            run = volumes["run-podnet"]
            os.makedirs(os.path.join(run, "labs"), exist_ok=True)
            node.mounts_pid = _spawn(ns, ["unshare", "--mount", "--propagation", "slave",
                                          "sh", "-c", f"mount --bind {LABS_DIR} {run}/labs && "
                                          f"mount --rbind {run} /run/podnet && "
                                          "exec sleep infinity"], os.path.join(d, "mounts.log"))
            self.save()
        if not os.path.exists(os.path.join(volumes["cni-bin"], "podnet")):
            self._run_in(ns, daemonset.podman_run(init, volumes, {},
                                                  f"{self.prefix}{node.name}-init",
                                                  ("--rm", "--replace")), env)
        name = f"{self.prefix}{node.name}-agent"
        self._run_in(ns, daemonset.podman_run(
            agent, volumes, {"NODE_NAME": node.name, "PODNET_ETCD": t.etcd_url},
            name, ("-d", "--rm", "--replace")), env)
        pid = self._run_in(ns, ["podman", "inspect", "--format", "{{.State.Pid}}", name], env)
        node.agent_pid = int(pid.strip())
        self.save()

    def _etcd_secret(self, d: str) -> str:
        """The Secret the DaemonSet mounts: etcd's CA and the client certificate, no more."""
        c = self.certs
        assert c is not None  # the topology requires TLS for image agents
        secret = os.path.join(d, "etcd-secret")
        os.makedirs(secret, mode=0o700, exist_ok=True)
        for src, dst in ((c.ca, "ca.crt"), (c.client_cert, "client.crt"),
                         (c.client_key, "client.key")):
            shutil.copyfile(src, os.path.join(secret, dst))
        return secret

    def _wait_agent(self, node: NodeSpec) -> None:
        d = self.node_dir(node)
        conf = os.path.join(self.conf_dir(node), "10-podnet.conflist")
        what = f"the agent of {node.name} did not come up"

        def up() -> bool:
            if not _alive(node.agent_pid):
                raise UserError(what, f"{d}/agent.log says why")
            return os.path.exists(conf) and os.path.exists(self.socket(node))

        self._wait(up, 60, what)

    def conflist(self, node: NodeSpec) -> dict[str, Any]:
        with open(os.path.join(self.conf_dir(node), "10-podnet.conflist")) as fh:
            conf: dict[str, Any] = json.load(fh)
        return conf

    def ipam_ranges(self, node: NodeSpec) -> list[dict[str, Any]]:
        """The node's IPAM range of each family, as its conflist gives them (a range set per
        family, or one `subnet`)."""
        ipam: dict[str, Any] = self.conflist(node)["plugins"][0]["ipam"]
        return [rs[0] for rs in ipam["ranges"]] if "ranges" in ipam else [ipam]

    def runtime(self, node: NodeSpec) -> Runtime:
        netns_path = ns_path(node.netns(self.topo.name))
        if self.topo.agent_image:  # the plugins the init container installed, in the node's view
            return Runtime(path=[os.path.join(self.node_root(node), "opt/cni/bin"),
                                 REFERENCE_PLUGINS], node_netns=netns_path,
                           node_mounts=f"/proc/{node.mounts_pid}/ns/mnt")
        return Runtime(path=[os.path.join(self.dir, "bin"), REFERENCE_PLUGINS],
                       node_netns=netns_path)

    def _pod(self, pod: PodSpec) -> None:
        node = self.topo.node(pod.node)
        ns = pod.netns(self.topo.name)
        self.new_ns(ns)
        runtime = self.runtime(node)
        # As kubelet names a pod to its plugins (and so to the records verify reads).
        runtime.extra_env["CNI_ARGS"] = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.namespace};"
                                         f"K8S_POD_NAME={pod.k8s_name}")
        result = runtime.add_list(self.conflist(node), pod.name, ns_path(ns))
        pod.ips = [ipc["address"].split("/")[0] for ipc in result["ips"]]
        pod.ip = next((ip for ip in pod.ips if ":" not in ip), pod.ips[0] if pod.ips else "")
        self.progress(f"pod {pod.name}: {', '.join(pod.ips)}")

    # -- changes ------------------------------------------------------------------------------
    def add_node(self, start_agent: bool = True) -> NodeSpec:
        """A node wired to the underlay; its agent started and up unless asked otherwise."""
        node = self.topo.new_node()
        self._node(node, start_agent)
        if not start_agent:
            self.save()
            return node
        self._wait_agent(node)
        if registry.spec(self.topo.backend).routed_by_gateway:
            self._wait(self._router_knows_all, 30, "the router did not learn the new subnet")
        self._wait(self._agents_know_all, 30, "the agents did not learn the new node's lease")
        self.save()
        return node

    def _agents_know_all(self) -> bool:
        """Every agent counts every node's lease (its metrics): an agent serves its CNI socket
        before watch events have told it of every other node, and a lab is up (a node added)
        only once each routes to every other's pods."""
        want = f"podnet_leases_known {len(self.topo.nodes)}"
        for node in self.topo.nodes:
            try:
                with netns.entered(ns_path(node.netns(self.topo.name))), \
                        urllib.request.urlopen(METRICS_URL, timeout=2) as answer:
                    if want not in answer.read().decode().splitlines():
                        return False
            except (OSError, http.client.HTTPException):
                return False
        return True

    def add_pod(self, node_name: str, namespace: str = "default", pod_name: str = "",
                labels: dict[str, str] | None = None) -> PodSpec:
        """A pod on the node; its labels stored before it is wired, so that NetworkPolicy
        judges it by them from its first packet."""
        pod = self.topo.new_pod(node_name, namespace, pod_name, labels)
        try:
            if pod.labels:
                self.set_pod_labels(pod, pod.labels)
            self._pod(pod)
        except BaseException:
            self.topo.pods.remove(pod)
            raise
        self.save()
        return pod

    def set_pod_labels(self, pod: PodSpec, labels: dict[str, str]) -> None:
        """The pod's labels in the lab's etcd (`podnet label pod` does the same)."""
        from podnet.policy import store

        with netns.entered(ns_path(self.prefix + "cp")):
            kv = self.etcd_store()
            try:
                _, ports = store.pod_meta(kv, pod.k8s_key)
                store.set_pod_meta(kv, pod.k8s_key, labels, ports)
            finally:
                kv.close()
        pod.labels = dict(labels)

    def remove_pod(self, pod: PodSpec) -> None:
        node = self.topo.node(pod.node)
        with contextlib.suppress(Exception):
            self.runtime(node).del_list(self.conflist(node), pod.name, ns_path(
                pod.netns(self.topo.name)))
        self._forget_ns(pod.netns(self.topo.name))
        self.topo.pods.remove(pod)

    def remove_node(self, name: str) -> None:
        node = self.topo.node(name)
        for pod in [p for p in self.topo.pods if p.node == name]:
            self.remove_pod(pod)
        _kill(node.agent_pid, ns=node.netns(self.topo.name))
        d = self.node_dir(node)
        # A graceful leave: the lease is freed, so every peer forgets the node at once.
        with contextlib.suppress(UserError):
            self._run_in(node.netns(self.topo.name), self._podnet(
                "agent", "--leave", *self.etcd_args(), "--node-name", name,
                "--cni-conf-dir", self.conf_dir(node), "--state-dir", self.state_dir(node),
                "--cni-socket", self.socket(node)))
        self._forget_ns(node.netns(self.topo.name))
        self._unplug(node)
        self.topo.nodes.remove(node)
        shutil.rmtree(d, ignore_errors=True)
        self.save()

    def _unplug(self, node: NodeSpec) -> None:
        """The switch's or router's end of the node's link, which would outlive the node's
        namespace for a while (namespaces are freed asynchronously)."""
        core = self.prefix + ("sw" if self.topo.underlay == "switch" else "rt")
        _in_ns(core, lambda ipr: links.delete_link(ipr, node.name))

    def reboot_node(self, name: str, keep_state: bool = True) -> NodeSpec:
        """A node restarted: its namespace and all kernel state gone, its pods gone (without a
        CNI DEL, as a reboot ends them), then the node made again with its address and its
        agent started. `keep_state`: its disk survives (the agent's state and IPAM records,
        the conflist); otherwise those are lost too."""
        node = self.topo.node(name)
        for pod in [p for p in self.topo.pods if p.node == name]:
            self._forget_ns(pod.netns(self.topo.name))
            self.topo.pods.remove(pod)
            self.topo.retired_pods.append(pod.name)
        self._forget_ns(node.netns(self.topo.name))
        self._unplug(node)
        d = self.node_dir(node)
        lost = [self.socket(node)]  # /run is a tmpfs
        if not keep_state:
            lost += [self.state_dir(node), self.conf_dir(node), os.path.join(d, "ipam")]
        for path in lost:
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        self.save()
        self._node(node)
        self._wait_agent(node)
        self.save()
        return node

    def stop_agent(self, name: str) -> NodeSpec:
        """Stop a node's agent (SIGTERM); the node keeps its data plane."""
        node = self.topo.node(name)
        _kill(node.agent_pid, ns=node.netns(self.topo.name))
        return node

    def upgrade_agent(self, name: str, src: str) -> None:
        """Replace a node's agent by the podnet at `src` (a source tree's src/; empty: this
        one), as an upgrade does: stop, start the other, wait for it."""
        self.topo.node(name).agent_src = src
        self.restart_agent(name)

    def restart_agent(self, name: str) -> None:
        node = self.stop_agent(name)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.socket(node))
        self.start_agent(node)
        self._wait_agent(node)

    def stop_etcd(self) -> None:
        for member in self.topo.etcd_names:
            _kill(self.topo.etcd_pids.get(member, 0), ns=self.prefix + member)
            self.topo.etcd_pids[member] = 0
        self.save()

    def start_etcd(self) -> None:
        self._etcd()

    def target_netns(self, target: str) -> str:
        """A node, a pod, or `cp`, `sw`, `rt`: its namespace path."""
        names = {n.name: n.netns(self.topo.name) for n in self.topo.nodes}
        names.update({p.name: p.netns(self.topo.name) for p in self.topo.pods})
        names.update({k: self.prefix + k for k in ("sw", "rt", *self.topo.etcd_names)})
        if target not in names or names[target] not in self.topo.netns_made:
            raise UserError(f"no {target!r} in lab {self.topo.name}",
                            f"try one of {', '.join(sorted(names))}")
        return ns_path(names[target])

    def missing(self) -> list[str]:
        """Namespaces the lab should have but does not (removed behind its back)."""
        return [ns for ns in self.topo.namespaces() if not os.path.exists(ns_path(ns))]

    def teardown(self) -> list[str]:
        """Remove what the lab's record holds: its namespaces (and the processes in them),
        its directory and its state. Returns the namespaces removed."""
        made = [ns for ns in self.topo.netns_made if os.path.exists(ns_path(ns))]
        for ns in reversed(made):  # pods and nodes before etcd and the underlay
            self._forget_ns(ns)
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(state_path(self.topo.name))
        self.progress(f"removed {len(made)} namespaces of lab {self.topo.name}")
        return made


def down(name: str, progress: Progress = _quiet) -> list[str]:
    """Remove the lab `name` as its recorded state describes it; a lab with no state is gone
    already ([]). Returns the namespaces removed."""
    if not os.path.exists(state_path(name)):
        return []
    return Lab.load(name, progress).teardown()


def status(lab: Lab) -> dict[str, Any]:
    t = lab.topo
    subnets: dict[str, list[str]] = {}
    for node in t.nodes:
        with contextlib.suppress(OSError, KeyError, IndexError, ValueError):
            # l2: the node's range of the shared subnet; otherwise the node's own subnet.
            subnets[node.name] = [
                f"{r['rangeStart']}-{r['rangeEnd']}" if r.get("rangeStart") else r["subnet"]
                for r in lab.ipam_ranges(node)]
    return {
        "name": t.name, "backend": t.backend, "underlay": t.underlay,
        # Where a client reaches the lab's datastore: the URL, from inside that namespace.
        "etcd": {"url": t.etcd_url, "netns": t.netns_prefix + "cp",
                 "members": [{"name": m, "netns": t.netns_prefix + m,
                              "url": t.etcd_member_url(m), "pid": t.etcd_pids.get(m, 0)}
                             for m in t.etcd_names],
                 **({} if lab.certs is None else {"ca": lab.certs.ca,
                                                  "cert": lab.certs.client_cert,
                                                  "key": lab.certs.client_key})},
        "ip_family": t.ip_family, "underlay_family": t.underlay_family,
        "nodes": [{"name": n.name, "netns": n.netns(t.name), "node_ip": t.node_ip(n),
                   "node_ips": t.node_ips(n),
                   "pod_subnet": subnets.get(n.name, [""])[0],
                   "pod_subnets": subnets.get(n.name, []), "agent_pid": n.agent_pid}
                  for n in t.nodes],
        "pods": [{"name": p.name, "netns": p.netns(t.name), "ip": p.ip,
                  "ips": p.ips or [p.ip], "node": p.node, "namespace": p.namespace,
                  "pod_name": p.k8s_name, "labels": p.labels} for p in t.pods],
    }
