"""Pure logic of the datastore model, the vxlan options and the lab topology."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podnet.backends import gateway
from podnet.backends.base import BackendError
from podnet.backends.vxlan import tx_offload_wanted, vtep_mac
from podnet.datastore.model import ConfigError, Lease, NetworkConfig, NewerFormat, subnet_key
from podnet.lab.topology import Topology


@pytest.mark.parametrize("cidr,length,backend,msg", [
    ("10.244.0.0/33", 24, "vxlan", "malformed"), ("10.244.0.1/16", 24, "vxlan", "malformed"),
    ("fd00:10:244::/56", 24, "vxlan", "IPv6 subnet length /24 cannot fit"),
    ("10.244.0.0/16", 16, "vxlan", "cannot fit"),
    ("10.244.0.0/16", 31, "vxlan", "cannot fit"), ("10.244.0.0/16", 24, "ipip", "unknown"),
    ("10.0.0.0/30", 31, "vxlan", "too small"), ("127.0.0.0/16", 24, "vxlan", "reserved"),
    ("169.254.0.0/16", 24, "vxlan", "reserved"), ("224.0.0.0/8", 24, "vxlan", "reserved"),
])
def test_config_refused(cidr: str, length: int, backend: str, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        NetworkConfig.make(cidr, length, {"type": backend})


def test_config_round_trip_and_capacity() -> None:
    conf = NetworkConfig.make("10.244.0.0/16", None, {"type": "vxlan", "vni": 4})
    assert conf.subnet_len == 24 and conf.capacity == 256
    assert NetworkConfig.from_json(conf.to_json()) == conf


CONF = NetworkConfig.make("10.244.0.0/16", 24, {"type": "vxlan"})


@pytest.mark.parametrize("payload,msg", [
    ("{", "not valid"), (json.dumps({"subnet": "10.99.0.0/24", "node": "n",
                                     "nodeIP": "192.168.1.1"}), "not a /24"),
    (json.dumps({"subnet": "10.244.1.0/25", "node": "n", "nodeIP": "192.168.1.1"}), "not a /24"),
    (json.dumps({"subnet": "10.244.1.0/24", "node": "n", "nodeIP": "10.244.9.9"}), "inside"),
    (json.dumps({"subnet": "10.244.1.0/24", "node": "", "nodeIP": "192.168.1.1"}), "node name"),
    (json.dumps({"subnet": "10.244.1.0/24", "node": "n", "nodeIP": "0.0.0.0"}), "unicast"),
    (json.dumps({"subnet": "10.244.1.0/24", "node": "n", "nodeIP": "192.168.1.1",
                 "attrs": []}), "attrs"),
    (json.dumps({"subnet": "10.244.1.0/24", "node": "n", "nodeIP": "1.2.3.999"}), "IPv4"),
    (json.dumps({"subnet": "10.244.1.0/24", "node": "n", "nodeIP": "010.2.3.4"}), "IPv4"),
    (json.dumps({"subnet": "10.244.1.0/24x", "node": "n", "nodeIP": "1.2.3.4"}), "valid"),
    (json.dumps({"subnet": "10.244.1.1/24", "node": "n", "nodeIP": "1.2.3.4"}), "not a /24"),
    (json.dumps({"subnet": "fd00::/24", "node": "n", "nodeIP": "1.2.3.4"}), "IPv4"),
    (json.dumps({"subnet": "10.244.1.0/24", "node": "n", "nodeIP": "fe80::1"}), "unicast"),
    (json.dumps({"subnet": "10.244.1.0/24", "node": "n", "nodeIP": "2001:db8::1"}),
     "reserved"),
    (json.dumps({"subnet": "10.244.1.0/24", "node": "n", "nodeIP": "fd00::1:2::"}), "valid"),
])
def test_hostile_lease_refused(payload: str, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        Lease.from_json(payload, CONF)


@pytest.mark.parametrize("option,kernel,want", [
    ("auto", "5.4.0-150-generic", False), ("auto", "5.7.0", True), ("auto", "6.18.44", True),
    (False, "6.18.44", False), (True, "4.19.0", True),
])
def test_tx_offload_policy(option: object, kernel: str, want: bool) -> None:
    assert tx_offload_wanted(option, kernel) is want


def test_tx_offload_option_checked() -> None:
    with pytest.raises(BackendError):
        tx_offload_wanted("sometimes", "6.1")


def test_fast_path_option_checked() -> None:
    assert NetworkConfig.make("10.244.0.0/16", None, {"type": "host-gw", "fastPath": False})
    with pytest.raises(ConfigError, match="fastPath"):
        NetworkConfig.make("10.244.0.0/16", None, {"type": "host-gw", "fastPath": "no"})


def test_vtep_mac_is_stable_and_local_unicast() -> None:
    mac = vtep_mac("node1", 1)
    assert mac == vtep_mac("node1", 1) != vtep_mac("node2", 1)
    assert int(mac.split(":")[0], 16) & 0b11 == 0b10  # locally administered, unicast


def test_topology_names_and_addresses() -> None:
    topo = Topology.make("lab1", "vxlan", nodes=2, pods_per_node=2)
    assert [p.name for p in topo.pods] == ["node1-p1", "node1-p2", "node2-p1", "node2-p2"]
    assert topo.node_ip(topo.nodes[1]) == "192.168.100.12"
    routed = Topology.make("lab2", "gateway", nodes=1, pods_per_node=0, underlay="routed")
    assert routed.gateway(routed.nodes[0]) == "192.168.101.1"
    assert Topology.from_dict(topo.to_dict()).to_dict() == topo.to_dict()
    with pytest.raises(ValueError):
        Topology.make("Bad_Name", "vxlan", 1, 1)
    with pytest.raises(ValueError, match="router"):
        Topology.make("lab3", "gateway", 1, 1)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=10)
lease_like = st.fixed_dictionaries({}, optional={
    "subnet": st.sampled_from(["10.244.1.0/24", "10.244.1.0/33", "1.2.3", "a/b"]) | json_values,
    "node": st.text(max_size=5) | json_values,
    "nodeIP": st.sampled_from(["1.2.3.4", "1.2.3.256", "::1", "1..2.3"]) | json_values,
    "attrs": json_values})


@given(payload=st.one_of(lease_like.map(json.dumps), st.text(max_size=40)))
def test_any_payload_is_a_lease_or_a_config_error(payload: str) -> None:
    try:
        lease = Lease.from_json(payload, CONF)
    except ConfigError:
        return
    assert lease.subnet.subnet_of(CONF.network) and lease.subnet.prefixlen == 24


def test_a_datastore_format_newer_than_known_is_refused() -> None:
    conf = NetworkConfig.make("10.244.0.0/16", None, {"type": "vxlan"})
    stored = json.loads(conf.to_json())
    assert stored["format"] == 1
    del stored["format"]  # as the first releases wrote it
    assert NetworkConfig.from_json(json.dumps(stored)) == conf
    with pytest.raises(NewerFormat, match="format 3 by a newer podnet; this one knows format 2"):
        NetworkConfig.from_json(json.dumps({**stored, "format": 3}))
    for bad in ("2", None, True):
        with pytest.raises(ConfigError, match="not a number"):
            NetworkConfig.from_json(json.dumps({**stored, "format": bad}))


def test_dual_stack_config_and_leases() -> None:
    conf = NetworkConfig.make("10.244.0.0/16", None, {"type": "vxlan"}, "fd00:10:244::/56")
    assert conf.subnet_len6 == 64
    stored = json.loads(conf.to_json())
    assert (stored["format"], stored["network6"], stored["subnetLen6"]) == (
        2, "fd00:10:244::/56", 64)
    assert NetworkConfig.from_json(conf.to_json()) == conf
    subnet = ipaddress.IPv4Network("10.244.7.0/24")
    assert str(conf.subnet6_for(subnet)) == "fd00:10:244:7::/64"
    lease = Lease.make(conf, subnet, "n1", ipaddress.IPv4Address("192.168.1.7"), {})
    back = Lease.from_json(lease.to_json(), conf)
    assert back == lease and [str(s) for s in back.subnets] == ["10.244.7.0/24",
                                                               "fd00:10:244:7::/64"]
    # A lease written by an IPv4-only agent gains its IPv6 subnet from the config.
    old = json.loads(lease.to_json())
    del old["subnet6"]
    assert Lease.from_json(json.dumps(old), conf).subnet6 == lease.subnet6
    with pytest.raises(ConfigError, match=r"goes with 10\.244\.7\.0/24"):
        Lease.from_json(json.dumps({**old, "subnet6": "fd00:10:244:8::/64"}), conf)
    # An IPv4-only cluster's config and leases are what the previous release wrote.
    v4 = NetworkConfig.make("10.244.0.0/16", None, {"type": "vxlan"})
    assert json.loads(v4.to_json())["format"] == 1 and "network6" not in v4.to_json()
    assert "subnet6" not in Lease.make(v4, subnet, "n1", lease.node_ip, {}).to_json()


@pytest.mark.parametrize(("cidr6", "len6", "backend", "message"), [
    ("10.245.0.0/16", None, "vxlan", "two IPv4 cluster CIDRs"),
    ("fd00:10:244::/56", 121, "vxlan", "at most /120"),
    ("fd00:10:244::/60", 64, "vxlan", "fewer /64 subnets"),
    ("fe80::/56", None, "vxlan", "reserved range fe80::/10"),
    ("fd00:10:244::/56", None, "gre", "carries IPv4 pods only"),
    ("fd00:10:244::1/56", None, "vxlan", "malformed"),
])
def test_bad_dual_stack_configs(cidr6: str, len6: int | None, backend: str,
                                message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NetworkConfig.make("10.244.0.0/16", None, {"type": backend}, cidr6, len6)


def test_nodes_at_ipv6_addresses() -> None:
    """Over an IPv6 underlay a lease holds the node's IPv6 address; a node sends from it in
    IPv6 and from its pod gateway in IPv4. Backends that need an IPv4 underlay refuse it."""
    conf = NetworkConfig.make("10.244.0.0/16", None, {"type": "host-gw"}, "fd00:10:244::/56")
    subnet = ipaddress.IPv4Network("10.244.7.0/24")
    lease = Lease.make(conf, subnet, "n1", ipaddress.IPv6Address("fd00:192:168:100::7"), {})
    back = Lease.from_json(lease.to_json(), conf)
    assert back == lease and back.node_ip.version == 6
    assert (str(back.address(4)), str(back.address(6))) == ("10.244.7.1",
                                                            "fd00:192:168:100::7")
    v4 = Lease.make(conf, subnet, "n1", ipaddress.IPv4Address("192.168.1.7"), {})
    assert (str(v4.address(4)), str(v4.address(6))) == ("192.168.1.7", "fd00:10:244:7::1")
    other = NetworkConfig.make("10.244.0.0/16", None, {"type": "gre"})
    with pytest.raises(ConfigError, match="IPv4 underlay only"):
        Lease.from_json(lease.to_json(), other)
    with pytest.raises(ConfigError, match="inside the pod network"):
        Lease.from_json(json.dumps({**json.loads(lease.to_json()),
                                    "nodeIP": "fd00:10:244:9::1"}), conf)
    # A dual-stack underlay: an IPv4 node IP and an IPv6 one beside it (gateway's too).
    for backend in ("host-gw", "gateway"):
        both_conf = NetworkConfig.make("10.244.0.0/16", None, {"type": backend},
                                       "fd00:10:244::/56")
        both = Lease.make(both_conf, subnet, "n1", ipaddress.IPv4Address("192.168.1.7"), {},
                          ipaddress.IPv6Address("fd00:192:168:1::7"))
        back = Lease.from_json(both.to_json(), both_conf)
        assert back == both and [str(ip) for ip in back.underlay_ips] == [
            "192.168.1.7", "fd00:192:168:1::7"]
        assert str(back.address(6)) == "fd00:192:168:1::7"
    for bad, message in (("fd00:10:244:9::1", "inside the pod network"),
                         ("192.168.1.8", "not valid"), ("fe80::1", "unicast")):
        with pytest.raises(ConfigError, match=message):
            Lease.from_json(json.dumps({**json.loads(both.to_json()), "nodeIP6": bad}),
                            both_conf)


def test_ipv6_only_config_and_leases() -> None:
    conf = NetworkConfig.make("fd00:10:244::/56", None, {"type": "vxlan"})
    assert (conf.families, conf.subnet_len, conf.capacity) == ([6], 64, 256)
    stored = json.loads(conf.to_json())
    assert stored["format"] == 2 and "network6" not in stored  # format 1 agents refuse it
    assert NetworkConfig.from_json(conf.to_json()) == conf
    subnet = conf.subnet_at(5)
    lease = Lease.make(conf, subnet, "n1", ipaddress.IPv4Address("192.168.1.7"), {})
    assert lease.subnet6 is None and str(lease.address(6)) == "fd00:10:244:5::1"
    assert Lease.from_json(lease.to_json(), conf) == lease
    with pytest.raises(ConfigError, match="not a /64"):
        Lease.from_json(json.dumps({**json.loads(lease.to_json()),
                                    "subnet": "fd00:10:245::/64"}), conf)
    assert NetworkConfig.make("fd00:10:244::/112", None, {"type": "l2"}).subnet_len == 120


@pytest.mark.parametrize(("cidr", "length", "length6", "backend", "message"), [
    ("fd00:10::/32", None, None, "vxlan", "more than the 2\\^16"),
    ("fd00:10:244::/56", 48, None, "vxlan", "cannot fit"),
    ("fd00:10:244::/56", 64, 72, "vxlan", "one subnet length"),
    ("fd00:10:244::/56", None, 121, "host-gw", "at most /120"),
    ("fd00:10:244::/56", None, None, "gre", "IPv4 pods only"),
])
def test_bad_ipv6_only_configs(cidr: str, length: int | None, length6: int | None,
                               backend: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NetworkConfig.make(cidr, length, {"type": backend}, None, length6)


def test_lab_underlay_families() -> None:
    topo = Topology.make("lab6", "vxlan", nodes=2, pods_per_node=0)
    topo.underlay_family = "ipv6"
    topo.check()
    assert topo.node_ip(topo.nodes[1]) == "fd00:192:168:100::c"
    assert topo.etcd_url == "http://[fd00:192:168:100::2]:2379"
    assert Topology.from_dict(topo.to_dict()).underlay_family == "ipv6"
    bad = Topology.make("lab7", "gre", nodes=1, pods_per_node=0)
    bad.underlay_family = "ipv6"
    with pytest.raises(ValueError, match="IPv4 underlay only"):
        bad.check()
    # A routed IPv6-only underlay: the node's link, its gateway, etcd behind the router.
    routed = Topology.make("lab8", "gateway", nodes=2, pods_per_node=0, underlay="routed")
    routed.underlay_family, routed.ip_family = "ipv6", "dual"
    routed.check()
    node2 = routed.nodes[1]
    assert (routed.node_ip(node2), routed.gateway(node2)) == ("fd00:192:168:102::2",
                                                              "fd00:192:168:102::1")
    assert routed.node_ips(node2) == ["fd00:192:168:102::2"]
    assert routed.etcd_url == "http://[fd00:192:168:99::2]:2379"
    # One BGP session carries both families (IPv4 with IPv6 next hops).
    assert routed.router_sessions == [("fd00:192:168::/48",
                                       ["10.244.0.0/16", "fd00:10:244::/56"])]


def test_ipv6_masquerade_is_a_flag_of_every_backend() -> None:
    conf = NetworkConfig.make("10.244.0.0/16", None, {"type": "host-gw",
                                                      "ipv6Masquerade": False},
                              "fd00:10:244::/56")
    assert NetworkConfig.from_json(conf.to_json()).backend["ipv6Masquerade"] is False
    with pytest.raises(ConfigError, match="ipv6Masquerade"):
        NetworkConfig.make("10.244.0.0/16", None, {"type": "vxlan", "ipv6Masquerade": "yes"})


def test_bird_configs_carry_ipv4_over_an_ipv6_session() -> None:
    """A node without IPv4 announces its IPv4 subnet over its IPv6 session with IPv6 next
    hops, under a router ID hashed from its name (stable, and not the same for two nodes)."""
    node = gateway.node_bird_config(
        gateway.router_id("node1", ipaddress.IPv6Address("fd00::1")),
        [("fd00::1", "fd00::fe", ["10.244.1.0/24", "fd00:10:244:1::/64"])], 64513, 64512)
    assert node.count("protocol bgp") == 1 and node.count("protocol static") == 2
    assert "ipv4 { extended next hop on; import none; " in node
    assert "ipv6 { import none; " in node
    ids = {gateway.router_id(f"node{i}", ipaddress.IPv6Address("fd00::1")) for i in range(50)}
    assert len(ids) == 50 and all(ipaddress.ip_address(i).version == 4 for i in ids)
    assert gateway.router_id("n", ipaddress.IPv4Address("192.168.1.2")) == "192.168.1.2"
    dual = gateway.node_bird_config("192.168.1.2", [
        ("192.168.1.2", "192.168.1.1", ["10.244.1.0/24"]),
        ("fd00::2", "fd00::1", ["fd00:10:244:1::/64"])], 64513, 64512)
    assert dual.count("protocol bgp") == 2 and "extended next hop" not in dual
    router = gateway.router_bird_config("192.168.99.1", [
        ("fd00:192:168::/48", ["10.244.0.0/16", "fd00:10:244::/56"])], 64512, 64513)
    assert router.count("protocol kernel") == 2 and router.count("protocol bgp") == 1
    assert "ipv4 { extended next hop on; import where net ~ [ 10.244.0.0/16{16,32} ]" in router


@pytest.mark.parametrize(("network", "length"), [("10.0.0.0/8", 24), ("10.244.0.0/16", 26),
                                                   ("fd00:10:244::/56", 64)])
def test_subnets_by_index_match_the_list(network: str, length: int) -> None:
    """A lease picks among a /8's 65,536 subnets by index, without making them all."""
    config = NetworkConfig(ipaddress.ip_network(network), length)
    every = list(config.network.subnets(new_prefix=length))
    for i in (0, 1, len(every) // 2, len(every) - 1):
        assert config.subnet_at(i) == every[i] and config.subnet_index(every[i]) == i
    assert config.subnet_index(ipaddress.ip_network("192.168.0.0/24")) is None
    busy = {subnet_key(every[0]), subnet_key(every[-1]), "junk", "10.0.0.0-25", ""}
    free = config.free_indices(busy)
    assert free == list(range(1, len(every) - 1))
