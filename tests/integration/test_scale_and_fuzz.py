"""Many pods at once, and hostile input: every failure an error object, nothing left behind."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podnet.cni.invoke import Runtime
from tests.conftest import links_in, ns_run

PODS = 100


def test_100_parallel_adds_and_dels(runtime: Runtime, make_ns: Callable[[str], str], node: str,
                                    data_dir: str, cni_server: str) -> None:
    c = {"cniVersion": "1.1.0", "name": "many", "type": "podnet", "socket": cni_server,
         "isDefaultGateway": True,
         "ipam": {"type": "podnet-ipam", "subnet": "10.55.0.0/24", "dataDir": data_dir}}
    pods = [make_ns("p") for _ in range(PODS)]
    with ThreadPoolExecutor(max_workers=PODS) as pool:
        outs = list(pool.map(lambda i: runtime.exec("podnet", "ADD", c, f"c{i}", pods[i]),
                             range(PODS)))
    assert all(o.code == 0 for o in outs), [o.stdout for o in outs if o.code]
    addrs = {o.json["ips"][0]["address"] for o in outs}
    assert len(addrs) == PODS
    with ThreadPoolExecutor(max_workers=20) as pool:
        pings = list(pool.map(lambda p: ns_run(p, "ping", "-c1", "-W3", "10.55.0.1"), pods))
    assert all(p.returncode == 0 for p in pings)
    with ThreadPoolExecutor(max_workers=PODS) as pool:
        dels = list(pool.map(lambda i: runtime.exec("podnet", "DEL", c, f"c{i}", pods[i]),
                             range(PODS)))
    assert all(o.code == 0 for o in dels)
    left = os.listdir(os.path.join(data_dir, "many"))
    assert sorted(f for f in left if not f.startswith("last_reserved_ip.")) == ["lock"]
    assert [n for n in links_in(node) if n.startswith("veth")] == []


junk = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=20),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=5),
                                                                      st.integers(), max_size=2))
ipam = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["podnet-ipam", "host-local", "nope", "../x", ""]) | junk,
    "subnet": st.sampled_from(["10.44.0.0/24", "10.44.0.0/31", "300.1.1.1/8", "fd00::/64"])
    | junk,
    "ranges": st.lists(st.lists(st.fixed_dictionaries({"subnet": st.sampled_from(
        ["10.44.0.0/28", "x"]) | junk}), max_size=2), max_size=2) | junk,
    "gateway": st.sampled_from(["10.44.0.1", "10.45.0.1"]) | junk,
    "routes": st.lists(st.fixed_dictionaries({"dst": st.sampled_from(["0.0.0.0/0", "y"]) | junk}),
                       max_size=2) | junk,
})
config = st.fixed_dictionaries(
    {"cniVersion": st.sampled_from(["1.1.0", "1.0.0", "0.3.1", "0.4.0", "9.9.9"]) | junk},
    optional={
        "name": st.sampled_from(["fuzz", "bad name", ""]) | junk,
        "type": st.just("podnet") | junk,
        "bridge": st.sampled_from(["fuzzbr0", "x" * 16, "a/b", "lo"]) | junk,
        "mtu": st.integers(0, 70000) | junk,
        "isGateway": junk, "isDefaultGateway": junk, "ipMasq": junk, "hairpinMode": junk,
        "prevResult": st.fixed_dictionaries({"ips": junk}) | junk,
        "ipam": ipam | junk,
    })
env = st.fixed_dictionaries({"CNI_COMMAND": st.sampled_from(
    ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "BOGUS", ""])}, optional={
    "CNI_CONTAINERID": st.sampled_from(["fuzz1", "", "../..", "a b"]),
    "CNI_IFNAME": st.sampled_from(["eth0", "", "x" * 16, "a/b", "lo"]),
    "CNI_ARGS": st.sampled_from(["IP=10.44.0.9", "junk", "IP=nope", ""]),
    "CNI_PATH": st.sampled_from(["", "/nonexistent"]),
})


@pytest.fixture
def fuzz_target(make_ns: Callable[[str], str], node: str, cni_server: str,
                cni_bin: str) -> dict[str, Any]:
    return {"pod": make_ns("fuzzpod"), "node": node, "socket": cni_server,
            "runtime": Runtime(path=[cni_bin, "/usr/lib/cni"], node_netns=node)}


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(conf=config, environ=env, netns_ok=st.booleans(), raw=st.none() | st.binary(max_size=40),
       via_server=st.booleans())
def test_hostile_input_gives_error_object_and_leaves_nothing(
        fuzz_target: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
        conf: dict[str, Any], environ: dict[str, str], netns_ok: bool, raw: bytes | None,
        via_server: bool) -> None:
    rt: Runtime = fuzz_target["runtime"]
    pod = fuzz_target["pod"] if netns_ok else "/var/run/netns/pnt-does-not-exist"
    data_dir = str(tmp_path_factory.mktemp("fuzz"))
    if isinstance(conf.get("ipam"), dict):
        conf["ipam"]["dataDir"] = data_dir
    if via_server:
        conf["socket"] = fuzz_target["socket"]
    full_env = {"CNI_NETNS": pod, **environ}
    full_env.setdefault("CNI_PATH", ":".join(rt.path))
    stdin = raw if raw is not None else json.dumps(conf).encode()
    out = rt.exec("podnet", full_env["CNI_COMMAND"], stdin, env=full_env)
    assert "Traceback" not in out.stdout + out.stderr
    if out.code != 0:
        err = json.loads(out.stdout)
        assert {"cniVersion", "code", "msg"} <= set(err) and isinstance(err["code"], int)
    elif full_env["CNI_COMMAND"] == "ADD":
        assert rt.exec("podnet", "DEL", stdin, env={**full_env, "CNI_COMMAND": "DEL"}).code == 0
    assert links_in(pod if netns_ok else fuzz_target["pod"]) == ["lo"]
    assert not [n for n in links_in(fuzz_target["node"]) if n.startswith("veth")]
    for _root, _dirs, files in os.walk(data_dir):
        assert not [f for f in files if f[0].isdigit()], files
