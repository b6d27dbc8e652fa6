"""Every input a user types is checked before anything is touched: lab names, agent options,
cluster config, datastore URLs. Pure logic; each refusal names the problem and the fix."""

from __future__ import annotations

import argparse
import contextlib
import io
import ipaddress
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.agent.options import AgentOptions
from podnet.cli import build_parser, main
from podnet.datastore.model import ConfigError, NetworkConfig, node_ip_problem
from podnet.datastore.open import check_url
from podnet.errors import UserError
from podnet.lab.lab import LABS_DIR, lab_dir, state_path
from podnet.lab.topology import Topology, check_lab_name

# `podnet <command>: <what> (<fix>)`, one line.
FORM = re.compile(r"^podnet [a-z -]+: .+ \(.+\)$")

hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", ".", "..", "../x", "../../../tmp/somedir", "a/b", "x" * 17, "-x",
                     "X", "a b", "a\x00b", "lab\n", "é"]),
    st.from_regex(r"[a-z0-9][a-z0-9-]{0,15}", fullmatch=True))


@settings(max_examples=300)
@given(hostile_text)
def test_lab_names_accepted_stay_inside_the_labs_dir(name: str) -> None:
    try:
        check_lab_name(name)
    except UserError as exc:
        assert exc.fix.startswith("use 1-16 of a-z")
        with pytest.raises(UserError):
            lab_dir(name)
        with pytest.raises(UserError):
            state_path(name)
        return
    assert os.path.dirname(lab_dir(name)) == LABS_DIR
    assert os.path.dirname(state_path(name)) == LABS_DIR
    assert "/" not in name and name not in (".", "..")


@settings(max_examples=100, deadline=None)
@given(hostile_text, st.sampled_from(["up", "down", "status", "add-node", "diagram", "exec",
                                      "add-pod", "remove-node", "restart-agent", "verify"]))
def test_every_lab_command_applies_the_name_rule(name: str, command: str) -> None:
    # --name=VALUE: a value starting with '-' is still the option's value.
    words = {"verify": ["verify", f"--lab={name}"]}.get(command,
                                                        ["lab", command, f"--name={name}"])
    extra = {"diagram": ["-o", "/tmp/x.png"], "exec": ["node1"], "add-pod": ["node1"],
             "remove-node": ["node1"], "restart-agent": ["node1"]}.get(command, [])
    try:
        check_lab_name(name)
        valid = True
    except UserError:
        valid = False
    if valid:
        args = build_parser().parse_args([*words, *extra])
        assert (args.lab if command == "verify" else args.name) == name
        return
    out = io.StringIO()
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(out):
        build_parser().parse_args([*words, *extra])
    assert exc.value.code == 2
    err = out.getvalue().strip()
    assert FORM.match(err) and "is not valid" in err, err


names = st.one_of(st.text(max_size=30), st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?",
                                                      fullmatch=True))
paths = st.one_of(st.sampled_from(["/etc/cni/net.d", "relative/dir", "", "/" + "x" * 200]),
                  st.text(max_size=20))


@settings(max_examples=400)
@given(names, st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
       st.one_of(st.text(max_size=25), st.sampled_from(
           ["127.0.0.1:9153", "127.0.0.1:0", "[::1]:9153", "127.0.0.1:65536", "banana",
            ":80", "localhost:80", "127.0.0.1:-1"])),
       paths, paths, st.one_of(st.none(), st.text(max_size=20), st.sampled_from(
           ["192.168.1.1", "10.0.0.300", "::1"])))
def test_agent_options_are_checked(node: str, ttl: int, interval: float, metrics: str,
                                   conf_dir: str, socket_path: str, node_ip: str | None
                                   ) -> None:
    opts = AgentOptions(node_name=node, ttl=ttl, reconcile_interval=interval,
                        metrics_addr=metrics, cni_conf_dir=conf_dir, cni_socket=socket_path,
                        node_ip=node_ip)
    try:
        opts.check()
    except UserError as exc:
        assert exc.what and exc.fix
        return
    # Accepted: every invariant the agent relies on holds.
    assert 5 <= opts.ttl <= 86400 and 0.1 <= opts.reconcile_interval <= 3600
    assert os.path.isabs(opts.cni_conf_dir) and os.path.isabs(opts.cni_socket)
    assert len(opts.cni_socket.encode()) <= 107
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", opts.node_name)
    host, _, port = opts.metrics_addr.rpartition(":")
    ipaddress.ip_address(host.strip("[]"))
    assert 0 <= int(port) <= 65535
    if opts.node_ip is not None:
        ipaddress.IPv4Address(opts.node_ip)


@pytest.mark.parametrize("argv,message", [
    (["agent", "--node-name", "n1", "--reconcile-interval", "-1"], "out of range"),
    (["agent", "--node-name", "n1", "--reconcile-interval", "0"], "out of range"),
    (["agent", "--node-name", "n1", "--reconcile-interval", "nan"], "out of range"),
    (["agent", "--node-name", "n1", "--ttl", "0"], "out of range"),
    (["agent", "--node-name", "n1", "--ttl", "ten"], "not a whole number"),
    (["agent", "--node-name", "n1", "--log-level", "loud"], "invalid choice"),
    (["cluster", "init", "--cidr", "10.244.0.0/16", "--backend", "vxlan", "--vni",
      "16777216"], "out of range"),
    (["cluster", "init", "--cidr", "10.244.0.0/16", "--backend", "vxlan", "--vni", "0"],
     "out of range"),
    (["cluster", "init", "--cidr", "10.244.0.0/16", "--backend", "vxlan", "--port", "70000"],
     "out of range"),
    (["cluster", "init", "--cidr", "10.244.0.0/16", "--backend", "vxlan", "--subnet-len",
      "-3"], "out of range"),
    (["lab", "up", "--pods-per-node", "-3"], "out of range"),
    (["lab", "up", "--nodes", "0"], "out of range"),
    (["lab", "up", "--nodes", "51"], "out of range"),
    (["lab", "add-node", "--pods", "-1"], "out of range"),
    (["lab", "down", "--name", "../../../tmp/somedir"], "is not valid"),
    (["lab", "down", "--name", ""], "is not valid"),
])
def test_bad_options_refused_by_the_parser(capsys: pytest.CaptureFixture[str], argv: list[str],
                                           message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and FORM.match(err), err


@pytest.mark.parametrize("argv,message", [
    (["agent", "--node-name", "a/b c"], "not a Kubernetes node name"),
    (["agent", "--node-name", "Node1"], "not a Kubernetes node name"),
    (["agent", "--node-name", "n1", "--metrics", "banana"], "not HOST:PORT"),
    (["agent", "--node-name", "n1", "--metrics", "127.0.0.1:70000"], "not HOST:PORT"),
    (["agent", "--node-name", "n1", "--metrics", "example.com:80"], "not an IP address"),
    (["agent", "--node-name", "n1", "--node-ip", "10.0.0.300"], "not an IP address"),
    (["agent", "--node-name", "n1", "--iface", "a/b"], "not an interface name"),
    (["agent", "--node-name", "n1", "--state-dir", "state"], "not an absolute path"),
    (["agent", "--node-name", "n1", "--cni-socket", "/" + "s" * 120], "longer than 107"),
    (["agent", "--node-name", "n1", "--etcd", "file://relative/x"], "not an absolute file://"),
    (["agent", "--node-name", "n1", "--etcd", "http://h:99999"], "malformed"),
    (["agent", "--node-name", "n1", "--etcd", "ftp://h"], "not an etcd or file URL"),
    (["agent", "--node-name", "n1", "--leave", "--etcd", "file://x"], "not an absolute"),
    (["cluster", "show", "--etcd", "file:relative"], "not an absolute file://"),
    (["cluster", "show", "--etcd", "https://h:2379", "--etcd-ca", "/nonexistent.pem"],
     "is not a file"),
    (["cluster", "show", "--etcd", "https://h:2379", "--etcd-cert", "/etc/hostname"],
     "come together"),
    (["cni-server", "--socket", "cni.sock"], "not an absolute path"),
    (["cni", "add", "--netns", "/nonexistent", "--id", "a", "--conflist", "/nonexistent"],
     "cannot read the conflist"),
    (["cni", "add", "--netns", "/nonexistent", "--id", "a", "--conflist", "/etc/hostname"],
     "cannot read the conflist"),
    (["cni-server", "--socket", "/" + "s" * 120], "longer than 107"),
    (["cluster", "init", "--etcd", "file:///nonexistent/x", "--cidr", "10.244.0.0/16",
      "--cidr", "10.245.0.0/16", "--backend", "vxlan"], "two IPv4 cluster CIDRs"),
    (["cluster", "init", "--etcd", "file:///nonexistent/x", "--cidr", "fd00:1::/56",
      "--cidr", "10.244.0.0/16", "--backend", "gre"], "carries IPv4 pods only"),
    (["cluster", "init", "--etcd", "file:///nonexistent/x", "--cidr", "10.244.0.0/16",
      "--cidr", "fd00:1::/60", "--backend", "vxlan"], "fewer /64 subnets"),
    (["cluster", "init", "--etcd", "file:///nonexistent/x", "--cidr", "10.244.0.0/16",
      "--subnet-len-v6", "64", "--backend", "vxlan"], "needs an IPv6 cluster CIDR"),
    (["cluster", "init", "--etcd", "file:///nonexistent/x", "--cidr", "10.244.0.0/16",
      "--cidr", "fd00:1::/56", "--cidr", "fd00:2::/56", "--backend", "vxlan"], "3 --cidr"),
    (["lab", "up", "--backend", "gre", "--ip-family", "dual"], "carries IPv4 pods only"),
])
def test_bad_options_refused_before_anything(capsys: pytest.CaptureFixture[str],
                                             argv: list[str], message: str) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and FORM.match(err) and "Traceback" not in err, err


@pytest.mark.parametrize("backend,message", [
    ({"type": "vxlan", "vni": 16777216}, "from 1 to 16777215"),
    ({"type": "vxlan", "vni": 0}, "from 1 to 16777215"),
    ({"type": "vxlan", "vni": True}, "from 1 to 16777215"),
    ({"type": "vxlan", "port": 70000}, "from 1 to 65535"),
    ({"type": "vxlan", "port": "8472"}, "from 1 to 65535"),
    ({"type": "vxlan", "directRouting": "yes"}, "true or false"),
    ({"type": "host-gw", "vni": 5}, "it is an option of vxlan"),
    ({"type": "host-gw", "directRouting": True}, "it is an option of vxlan"),
    ({"type": "l2", "mode": "bgp"}, "it is an option of gateway"),
    ({"type": "vxlan", "mode": "bgp"}, "it is an option of gateway"),
    ({"type": "gateway", "mode": "ospf"}, "'bgp' or 'static'"),
    ({"type": "gateway", "routerAS": 0}, "from 1 to 4294967295"),
    ({"type": "gateway", "router": "router1"}, "an IPv4 address"),
    ({"type": "vxlan", "banana": 1}, "no backend has it"),
    ({"type": "ipip"}, "unknown backend"),
])
def test_backend_options_belong_to_their_backend(backend: dict[str, object],
                                                 message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        NetworkConfig.make("10.244.0.0/16", None, backend)


def test_options_a_backend_reads_are_accepted() -> None:
    for backend in ({"type": "vxlan", "vni": 16777215, "port": 1, "directRouting": True,
                     "txChecksumOffload": False, "fastPath": False},
                    {"type": "gateway", "mode": "static", "router": "192.168.99.1",
                     "routerAS": 64512, "nodeAS": 64513}, {"type": "l2", "fastPath": True}):
        conf = NetworkConfig.make("10.244.0.0/16", None, backend)
        assert NetworkConfig.from_json(conf.to_json()) == conf


def test_cluster_show_of_an_uninitialised_store(tmp_path: object,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster", "show", "--etcd", f"file://{tmp_path}/empty"]) == 1
    err = capsys.readouterr().err.strip()
    assert FORM.match(err) and "not initialised" in err


def test_cluster_init_refused_stores_nothing(tmp_path: object,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    store = os.path.join(str(tmp_path), "store")
    assert main(["cluster", "init", "--etcd", f"file://{store}", "--cidr", "10.244.0.0/16",
                 "--backend", "host-gw", "--vni", "5"]) == 1
    err = capsys.readouterr().err.strip()
    assert FORM.match(err) and "no option 'vni'" in err
    assert not os.path.exists(store)


@pytest.mark.parametrize("ip,config,problem", [
    ("10.244.3.4", "vxlan", "inside the pod network"),
    ("127.0.0.2", "vxlan", "not a unicast host address"),
    ("169.254.1.1", "vxlan", "not a unicast host address"),
    ("224.0.0.1", "vxlan", "not a unicast host address"),
    ("240.0.0.1", "vxlan", "reserved range"),
    ("0.1.2.3", "vxlan", "reserved range"),
    ("192.168.100.11", "vxlan", None),
])
def test_node_ip_rule(ip: str, config: str, problem: str | None) -> None:
    conf = NetworkConfig.make("10.244.0.0/16", None, {"type": config})
    found = node_ip_problem(ipaddress.IPv4Address(ip), conf)
    assert (found is None) if problem is None else (problem in (found or ""))


_EDGES = [int(edge) + step for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16",
                                     "224.0.0.0/4", "240.0.0.0/4", "10.244.0.0/16")
          for edge in (ipaddress.IPv4Network(n).network_address,
                       ipaddress.IPv4Network(n).broadcast_address) for step in (-1, 0, 1)
          if 0 <= int(edge) + step < 2**32]


@settings(max_examples=300)
@given(value=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from(_EDGES)),
       backend=st.sampled_from(["vxlan", "l2"]))
def test_node_ip_rule_in_integers_is_the_rule(value: int, backend: str) -> None:
    """IPv4 node addresses are judged on integer ranges: exactly where the rule's networks
    and address kinds put them."""
    from podnet.datastore.model import RESERVED

    conf = NetworkConfig.make("10.244.0.0/16", None, {"type": backend})
    ip = ipaddress.IPv4Address(value)
    barred = (ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip.is_link_local
              or any(ip in n for n in RESERVED) or (backend != "l2" and ip in conf.network))
    assert (node_ip_problem(ip, conf) is not None) == barred


@pytest.mark.parametrize("url,ok", [
    ("http://127.0.0.1:2379", True), ("https://etcd.example:2379", True),
    ("file:///var/lib/podnet", True), ("file://localhost/var/lib/podnet", True),
    ("file://relative/x", False), ("file:relative", False), ("http://:2379", False),
    ("http://h:0", False), ("http://h:65536", False), ("http://h:2379/v3", False),
    ("etcd://h:2379", False), ("", False),
])
def test_datastore_urls(url: str, ok: bool) -> None:
    if ok:
        check_url(url)
    else:
        with pytest.raises(UserError):
            check_url(url)


def test_topology_counts_are_checked() -> None:
    with pytest.raises(UserError, match="pods per node"):
        Topology.make("lab1", "vxlan", 1, -3)
    with pytest.raises(UserError, match="nodes"):
        Topology.make("lab1", "vxlan", 51, 0)


def test_every_backend_in_the_registry_is_made_from_it() -> None:
    from podnet.backends import registry
    from podnet.backends.base import Backend

    for name, spec in registry.SPECS.items():
        cls = spec.backend_class()
        assert issubclass(cls, Backend) and cls.name == name
        assert "fastPath" in spec.options
    parser = build_parser()
    for argv in (["cluster", "init", "--cidr", "10.244.0.0/16", "--backend", "x"],
                 ["lab", "up", "--backend", "x"], ["demo", "--backend", "x"]):
        with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
            parser.parse_args(argv)
    for name in registry.NAMES:
        assert parser.parse_args(["lab", "up", "--backend", name]).backend == name


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _subparsers(sub)
    return out


def test_help_shows_every_default_and_what_each_path_is_for() -> None:
    for parser in _subparsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
                continue
            assert action.help, (parser.prog, action.option_strings)
            assert "default" in action.help or f"(default: {action.default})" in text, \
                (parser.prog, action.option_strings)
    agent = next(p for p in _subparsers(build_parser()) if p.prog == "podnet agent")
    text = " ".join(agent.format_help().split())
    for path in ("/etc/cni/net.d", "/run/podnet/cni.sock", "/var/lib/podnet/agent",
                 "/var/lib/cni/networks"):
        assert path in text


@pytest.mark.parametrize("raw", [
    "80", [["TCP"]], [["ICMP", 1]], [["TCP", 0]], [["UDP", 70000]], [["SCTP", "9000"]],
    [["TCP", 80]] * 9,
])
def test_a_verify_requests_ports_are_checked_by_the_agent(raw: object) -> None:
    """What `verify --etcd` asks each agent to serve comes through etcd: anything but a
    short list of [protocol, port] is refused before a server starts."""
    from podnet.verify.responder import request_ports

    with pytest.raises(ValueError, match="ports: "):
        request_ports(raw)
    assert request_ports([["UDP", 53], ["SCTP", 9000]]) == [("UDP", 53), ("SCTP", 9000)]


@pytest.mark.parametrize("url,first", [
    ("http://10.0.0.2:2379", "http://10.0.0.2:2379/v3/kv/range"),
    ("https://etcd.example:2380", "https://etcd.example:2380/v3/kv/range"),
    ("http://[fd00:1::2]:2379", "http://[fd00:1::2]:2379/v3/kv/range"),
    ("http://etcd", "http://etcd:2379/v3/kv/range"),  # etcd's client port by default
])
def test_etcd_member_urls(url: str, first: str) -> None:
    from podnet.datastore.etcd import EtcdStore

    store = EtcdStore([url, "http://10.0.0.3:2379"])
    assert [m.url("/kv/range") for m in store.members] == [
        first, "http://10.0.0.3:2379/v3/kv/range"]
    store.close()
    with pytest.raises(ValueError, match="must look like"):
        EtcdStore([url, "ftp://10.0.0.3"])
