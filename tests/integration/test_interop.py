"""Interop with Debian's reference plugins, both ways, and sharing one IPAM data dir."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from podnet.cni.invoke import Runtime
from tests.conftest import ns_run


def _ipam(kind: str, data_dir: str, subnet: str = "10.66.0.0/24") -> dict[str, Any]:
    return {"type": kind, "subnet": subnet, "dataDir": data_dir}


def test_reference_bridge_with_podnet_ipam(runtime: Runtime, make_ns: Callable[[str], str],
                                           data_dir: str) -> None:
    c = {"cniVersion": "1.0.0", "name": "interop", "type": "bridge", "bridge": "refbr0",
         "isDefaultGateway": True, "ipam": _ipam("podnet-ipam", data_dir)}
    pod = make_ns("pod")
    out = runtime.exec("bridge", "ADD", c, "ctr1", pod)
    assert out.code == 0, out.stdout
    assert out.json["ips"][0]["address"] == "10.66.0.2/24"
    assert ns_run(pod, "ping", "-c1", "-W2", "10.66.0.1").returncode == 0
    assert runtime.exec("bridge", "CHECK", {**c, "prevResult": out.json}, "ctr1", pod).code == 0
    assert runtime.exec("bridge", "DEL", c, "ctr1", pod).code == 0
    assert not os.path.exists(os.path.join(data_dir, "interop", "10.66.0.2"))


def test_podnet_with_reference_host_local(runtime: Runtime, make_ns: Callable[[str], str],
                                          data_dir: str, cni_server: str) -> None:
    c = {"cniVersion": "1.0.0", "name": "interop", "type": "podnet", "socket": cni_server,
         "isDefaultGateway": True, "ipam": _ipam("host-local", data_dir)}
    pod = make_ns("pod")
    out = runtime.exec("podnet", "ADD", c, "ctr1", pod)
    assert out.code == 0, out.stdout
    assert ns_run(pod, "ping", "-c1", "-W2", "10.66.0.1").returncode == 0
    assert runtime.exec("podnet", "CHECK", {**c, "prevResult": out.json}, "ctr1", pod).code == 0
    assert runtime.exec("podnet", "DEL", c, "ctr1", pod).code == 0
    assert not os.path.exists(os.path.join(data_dir, "interop", "10.66.0.2"))


def test_portmap_chained_after_podnet(runtime: Runtime, make_ns: Callable[[str], str],
                                      node: str, data_dir: str, cni_server: str) -> None:
    conflist = {"cniVersion": "1.0.0", "name": "interop", "plugins": [
        {"type": "podnet", "socket": cni_server, "isDefaultGateway": True,
         "ipam": _ipam("podnet-ipam", data_dir)},
        {"type": "portmap", "capabilities": {"portMappings": True},
         "runtimeConfig": {"portMappings": [
             {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}}]}
    pod = make_ns("pod")
    result = runtime.add_list(conflist, "ctr1", pod)
    assert result["ips"][0]["address"] == "10.66.0.2/24"
    rules = ns_run(node, "iptables-save", "-t", "nat").stdout
    assert "18080" in rules and "10.66.0.2:80" in rules
    # Only podnet's CHECK: Debian's portmap fails its own CHECK on IPv4-only pods (it looks for
    # an IPv6 chain it never made).
    runtime.check_list({**conflist, "plugins": conflist["plugins"][:1]}, "ctr1", pod, result)
    runtime.del_list(conflist, "ctr1", pod)
    assert "10.66.0.2:80" not in ns_run(node, "iptables-save", "-t", "nat").stdout


def test_shared_data_dir_never_duplicates(runtime: Runtime, data_dir: str) -> None:
    """podnet-ipam and host-local taking turns on one dataDir hand out distinct addresses."""
    seen: list[str] = []
    for i in range(20):
        kind = "podnet-ipam" if i % 2 else "host-local"
        c = {"cniVersion": "1.0.0", "name": "shared", "type": "podnet",
             "ipam": _ipam(kind, data_dir, "10.66.0.0/27")}
        out = runtime.exec(kind, "ADD", c, f"ctr{i}", "/var/run/netns/unused", "eth0")
        assert out.code == 0, out.stdout
        seen.append(out.json["ips"][0]["address"])
    assert len(set(seen)) == 20
    # Each releases what the other reserved.
    for i in range(20):
        kind = "host-local" if i % 2 else "podnet-ipam"
        c = {"cniVersion": "1.0.0", "name": "shared", "type": "podnet",
             "ipam": _ipam(kind, data_dir, "10.66.0.0/27")}
        assert runtime.exec(kind, "DEL", c, f"ctr{i}", "", "eth0").code == 0
    left = [f for f in os.listdir(os.path.join(data_dir, "shared")) if f[0].isdigit()]
    assert left == []


def test_dual_stack_ranges_interoperate(runtime: Runtime, make_ns: Callable[[str], str],
                                        data_dir: str, cni_server: str) -> None:
    """Range sets of both families: the reference bridge with podnet-ipam, podnet with the
    reference host-local, and the two IPAMs taking turns on one dataDir."""
    def ipam(kind: str) -> dict[str, Any]:
        return {"type": kind, "dataDir": data_dir, "ranges": [
            [{"subnet": "10.67.0.0/24"}], [{"subnet": "fd00:67::/64"}]]}

    ref = {"cniVersion": "1.0.0", "name": "dual", "type": "bridge", "bridge": "dualbr",
           "isDefaultGateway": True, "ipam": ipam("podnet-ipam")}
    ours = {"cniVersion": "1.0.0", "name": "dual", "type": "podnet", "socket": cni_server,
            "bridge": "dualbr", "isDefaultGateway": True, "ipam": ipam("host-local")}
    pods = [make_ns("pod") for _ in range(2)]
    got = []
    for (kind, c), pod, cid in zip((("bridge", ref), ("podnet", ours)), pods, ("c1", "c2"),
                                   strict=True):
        out = runtime.exec(kind, "ADD", c, cid, pod)
        assert out.code == 0, out.stdout
        addresses = [ip["address"] for ip in out.json["ips"]]
        assert addresses[0].startswith("10.67.0.") and addresses[1].startswith("fd00:67::")
        got += addresses
        for gateway in ("10.67.0.1", "fd00:67::1"):
            # The reference bridge adds its IPv6 gateway with duplicate address detection:
            # a second or two before it answers (podnet's skips it).
            assert any(ns_run(pod, "ping", "-c1", "-W2", gateway).returncode == 0
                       for _ in range(3)), gateway
    assert len(set(got)) == 4  # one dataDir, never an address twice
    for address in got[2:]:  # one bridge: each plugin's pod reaches the other's
        assert ns_run(pods[0], "ping", "-c1", "-W2", address.split("/")[0]).returncode == 0
    for (kind, c), pod, cid in zip((("bridge", ref), ("podnet", ours)), pods, ("c1", "c2"),
                                   strict=True):
        assert runtime.exec(kind, "DEL", c, cid, pod).code == 0
    assert [f for f in os.listdir(os.path.join(data_dir, "dual")) if f[0].isdigit()] == []
