"""The `podnet` plugin end to end: exec'd as a runtime does, inside a node namespace."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from podnet.cni.invoke import Runtime
from podnet.netlink import netns, sysfs
from tests.conftest import links_in, ns_run, rps_masks


def conf(data_dir: str, subnet: str = "10.88.0.0/24", version: str = "1.1.0",
         socket: str | None = None, **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"cniVersion": version, "name": "podnet-test", "type": "podnet",
                         "bridge": "kube-bridge", "isDefaultGateway": True,
                         "ipam": {"type": "podnet-ipam", "subnet": subnet, "dataDir": data_dir}}
    if socket:
        c["socket"] = socket
    c.update(extra)
    return c


@pytest.fixture(params=["in-process", "server"])
def mode_socket(request: pytest.FixtureRequest) -> str | None:
    if request.param == "server":
        return str(request.getfixturevalue("cni_server"))
    return None


def allocated(data_dir: str, network: str = "podnet-test") -> list[str]:
    d = os.path.join(data_dir, network)
    return sorted(f for f in os.listdir(d) if f[0].isdigit()) if os.path.isdir(d) else []


def test_add_check_del(runtime: Runtime, make_ns: Callable[[str], str], node: str,
                       data_dir: str, mode_socket: str | None) -> None:
    pod = make_ns("pod")
    c = conf(data_dir, socket=mode_socket)
    out = runtime.exec("podnet", "ADD", c, "ctr1", pod)
    assert out.code == 0, out.stdout
    result = out.json
    assert next(i["name"] for i in result["interfaces"]) == "kube-bridge"
    assert result["interfaces"][2] == {**result["interfaces"][2], "name": "eth0", "sandbox": pod}
    ip = result["ips"][0]
    assert ip["address"] == "10.88.0.2/24" and ip["gateway"] == "10.88.0.1"
    assert ip["interface"] == 2
    assert {"dst": "0.0.0.0/0", "gw": "10.88.0.1"} in result["routes"]
    assert ns_run(pod, "ping", "-c1", "-W2", "10.88.0.1").returncode == 0
    assert ns_run(node, "ping", "-c1", "-W2", "10.88.0.2").returncode == 0

    check = runtime.exec("podnet", "CHECK", {**c, "prevResult": result}, "ctr1", pod)
    assert check.code == 0, check.stdout
    ns_run(pod, "ip", "route", "del", "default")
    check = runtime.exec("podnet", "CHECK", {**c, "prevResult": result}, "ctr1", pod)
    assert check.code != 0
    assert check.json["code"] == 100 and "route 0.0.0.0/0" in check.json["msg"]

    assert runtime.exec("podnet", "DEL", c, "ctr1", pod).code == 0
    assert links_in(pod) == ["lo"]
    assert allocated(data_dir) == []
    assert not [n for n in links_in(node) if n.startswith("veth")]
    # DEL is idempotent, also once the namespace is gone.
    assert runtime.exec("podnet", "DEL", c, "ctr1", pod).code == 0
    assert runtime.exec("podnet", "DEL", c, "ctr1", "/var/run/netns/gone").code == 0


def test_del_after_netns_gone_releases_ip(runtime: Runtime, make_ns: Callable[[str], str],
                                          data_dir: str, cni_server: str) -> None:
    pod = make_ns("pod")
    c = conf(data_dir, socket=cni_server)
    assert runtime.exec("podnet", "ADD", c, "ctr1", pod).code == 0
    assert allocated(data_dir) == ["10.88.0.2"]
    os.system(f"ip netns del {os.path.basename(pod)}")
    assert runtime.exec("podnet", "DEL", c, "ctr1", pod).code == 0
    assert allocated(data_dir) == []


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_result_in_requested_version(runtime: Runtime, make_ns: Callable[[str], str],
                                     data_dir: str, version: str, cni_server: str) -> None:
    pod = make_ns("pod")
    c = conf(data_dir, version=version, socket=cni_server)
    out = runtime.exec("podnet", "ADD", c, "ctr1", pod)
    assert out.code == 0, out.stdout
    assert out.json["cniVersion"] == version
    assert ("version" in out.json["ips"][0]) == version.startswith("0.")
    check = runtime.exec("podnet", "CHECK", {**c, "prevResult": out.json}, "ctr1", pod)
    if version in ("0.3.0", "0.3.1"):
        assert check.json["code"] == 1  # CHECK came with 0.4.0
    else:
        assert check.code == 0, check.stdout
    assert runtime.exec("podnet", "DEL", c, "ctr1", pod).code == 0


def test_failed_add_rolls_back(runtime: Runtime, make_ns: Callable[[str], str], node: str,
                               data_dir: str, mode_socket: str | None) -> None:
    c = conf(data_dir, subnet="10.88.0.0/30", socket=mode_socket)  # one usable address
    pod1, pod2 = make_ns("pod"), make_ns("pod")
    assert runtime.exec("podnet", "ADD", c, "ctr1", pod1).code == 0
    out = runtime.exec("podnet", "ADD", c, "ctr2", pod2)
    assert out.code != 0
    assert out.json["code"] == 101 and "no IP addresses available" in out.json["msg"]
    assert "Traceback" not in out.stdout + out.stderr
    assert links_in(pod2) == ["lo"]
    assert len([n for n in links_in(node) if n.startswith("veth")]) == 1
    assert allocated(data_dir) == ["10.88.0.2"]


def test_name_clashes_found_when_the_kernel_reports_them(
        runtime: Runtime, make_ns: Callable[[str], str], node: str, data_dir: str,
        mode_socket: str | None) -> None:
    """The veth pair is made without looking first: a pod interface of the name already
    there is refused with nothing left behind; a host end an interrupted ADD left is
    replaced."""
    from podnet.plugins.bridge import host_veth_name

    c = conf(data_dir, socket=mode_socket)
    pod = make_ns("pod")
    ns_run(pod, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    out = runtime.exec("podnet", "ADD", c, "ctr1", pod)
    assert out.code != 0 and out.json["code"] == 7
    assert "container interface eth0 already exists" in out.json["msg"]
    assert sorted(links_in(pod)) == ["eth0", "lo", "other0"]
    assert not [n for n in links_in(node) if n.startswith("veth")]
    assert allocated(data_dir) == []

    pod = make_ns("pod")
    left = host_veth_name("podnet-test", "ctr2", "eth0")
    ns_run(node, "ip", "link", "add", left, "type", "veth", "peer", "name", "stale0")
    out = runtime.exec("podnet", "ADD", c, "ctr2", pod)
    assert out.code == 0, out.stdout
    assert "stale0" not in links_in(node)  # the leftover pair is gone, a new one made
    assert left in links_in(node) and "eth0" in links_in(pod)
    assert ns_run(pod, "ping", "-c1", "-W2", "10.88.0.1").returncode == 0
    assert runtime.exec("podnet", "DEL", c, "ctr2", pod).code == 0


def test_existing_bridge_is_reused(runtime: Runtime, make_ns: Callable[[str], str], node: str,
                                   data_dir: str) -> None:
    ns_run(node, "ip", "link", "add", "kube-bridge", "type", "bridge")
    ns_run(node, "ip", "link", "add", "notabridge", "type", "veth", "peer", "name", "nb1")
    pod = make_ns("pod")
    assert runtime.exec("podnet", "ADD", conf(data_dir, mtu=1400), "ctr1", pod).code == 0
    assert links_in(node).count("kube-bridge") == 1
    assert "mtu 1400" in ns_run(pod, "ip", "link", "show", "eth0").stdout
    out = runtime.exec("podnet", "ADD", conf(data_dir, bridge="notabridge"), "ctr2",
                       make_ns("pod"))
    assert out.json["code"] == 7 and "not a bridge" in out.json["msg"]


def test_gateway_address_conflict_and_force(runtime: Runtime, make_ns: Callable[[str], str],
                                            node: str, data_dir: str, tmp_path: Any) -> None:
    assert runtime.exec("podnet", "ADD", conf(data_dir), "ctr1", make_ns("pod")).code == 0
    other = conf(str(tmp_path / "other"), subnet="10.77.0.0/24")
    out = runtime.exec("podnet", "ADD", other, "ctr2", make_ns("pod"))
    assert out.json["code"] == 7 and "already has an IP address" in out.json["msg"]
    out = runtime.exec("podnet", "ADD", {**other, "forceAddress": True}, "ctr3", make_ns("pod"))
    assert out.code == 0, out.stdout
    assert "10.77.0.1/24" in ns_run(node, "ip", "addr", "show", "kube-bridge").stdout


def test_ip_masq_rules_follow_pods(runtime: Runtime, make_ns: Callable[[str], str], node: str,
                                   data_dir: str) -> None:
    c = conf(data_dir, ipMasq=True)
    pod = make_ns("pod")
    assert runtime.exec("podnet", "ADD", c, "ctr1", pod).code == 0
    rules = ns_run(node, "nft", "list", "table", "inet", "podnet_cni").stdout
    assert "ip saddr 10.88.0.2 ip daddr != 10.88.0.0/24 masquerade" in rules
    assert runtime.exec("podnet", "DEL", c, "ctr1", pod).code == 0
    assert "masquerade" not in ns_run(node, "nft", "list", "table", "inet", "podnet_cni").stdout


def test_dual_stack_and_hairpin(runtime: Runtime, make_ns: Callable[[str], str],
                                data_dir: str, cni_server: str) -> None:
    c = conf(data_dir, socket=cni_server, hairpinMode=True)
    c["ipam"] = {"type": "podnet-ipam", "dataDir": data_dir,
                 "ranges": [[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd00:88::/64"}]]}
    pod = make_ns("pod")
    out = runtime.exec("podnet", "ADD", c, "ctr1", pod)
    assert out.code == 0, out.stdout
    addrs = [i["address"] for i in out.json["ips"]]
    assert addrs == ["10.88.0.2/24", "fd00:88::2/64"]
    assert {"dst": "::/0", "gw": "fd00:88::1"} in out.json["routes"]
    assert ns_run(pod, "ping", "-6", "-c1", "-W2", "fd00:88::1").returncode == 0


def test_gc_releases_unlisted_attachments(runtime: Runtime, make_ns: Callable[[str], str],
                                          data_dir: str, cni_server: str) -> None:
    c = conf(data_dir, socket=cni_server)
    for cid in ("keep", "stale"):
        assert runtime.exec("podnet", "ADD", c, cid, make_ns("pod")).code == 0
    assert len(allocated(data_dir)) == 2
    gc = {**c, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    out = runtime.exec("podnet", "GC", gc)
    assert out.code == 0, out.stdout
    assert allocated(data_dir) == ["10.88.0.2"]
    assert runtime.exec("podnet", "STATUS", c).code == 0
    out = runtime.exec("podnet", "GC", {**gc, "cniVersion": "1.0.0"})
    assert out.json["code"] == 1  # GC and STATUS came with 1.1.0


def test_podnet_after_another_plugin(runtime: Runtime, make_ns: Callable[[str], str],
                                     data_dir: str, cni_server: str) -> None:
    """Chained after the reference loopback plugin: its result comes first in ours."""
    conflist = {"cniVersion": "1.0.0", "name": "podnet-test",
                "plugins": [{"type": "loopback"}, conf(data_dir, socket=cni_server)]}
    pod = make_ns("pod")
    result = runtime.add_list(conflist, "ctr1", pod)
    names = [i["name"] for i in result["interfaces"]]
    assert names[0] == "lo" and names[-1] == "eth0"
    mine = [ip for ip in result["ips"] if ip["address"].startswith("10.88.")]
    assert mine and mine[0]["interface"] == len(names) - 1
    runtime.check_list(conflist, "ctr1", pod, result)
    runtime.del_list(conflist, "ctr1", pod)


def test_installed_plugins_run_with_clean_environment(cni_bin: str) -> None:
    import subprocess

    for plugin in ("podnet", "podnet-ipam"):
        proc = subprocess.run([os.path.join(cni_bin, plugin)], env={"CNI_COMMAND": "VERSION"},
                              input=b'{"cniVersion": "1.1.0"}', capture_output=True, check=False)
        assert proc.returncode == 0
        assert "1.1.0" in json.loads(proc.stdout)["supportedVersions"]


def test_pod_records_follow_add_and_del(runtime: Runtime, make_ns: Callable[[str], str],
                                        node: str, data_dir: str, mode_socket: str | None,
                                        tmp_path: Any) -> None:
    """The record the agent publishes: written by ADD with kubelet's names, gone after DEL;
    an ADD that cannot write it fails whole (IO error) and leaves nothing."""
    from podnet import podrecords

    records = str(tmp_path / "pods")
    c = conf(data_dir, socket=mode_socket, podRecords=records)
    pod = make_ns("pod")
    args = {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0"}
    out = runtime.exec("podnet", "ADD", c, "ctr1", pod, env=args)
    assert out.code == 0, out.stdout
    (rec,) = podrecords.read_all(records).values()
    assert rec == podrecords.PodRecord("ctr1", "eth0", "shop", "web-0", ("10.88.0.2/24",), pod)
    assert rec.display == "shop/web-0"
    assert runtime.exec("podnet", "DEL", c, "ctr1", pod, env=args).code == 0
    assert podrecords.read_all(records) == {}

    blocked = tmp_path / "file"
    blocked.write_text("")
    out = runtime.exec("podnet", "ADD", {**c, "podRecords": str(blocked / "pods")}, "ctr2", pod)
    assert out.code != 0 and out.json["code"] == 5 and "pod's record" in out.json["msg"]
    assert links_in(pod) == ["lo"] and allocated(data_dir) == []
    assert not [n for n in links_in(node) if n.startswith("veth")]
    bad = runtime.exec("podnet", "ADD", {**c, "podRecords": "relative/dir"}, "ctr3", pod)
    assert bad.json["code"] == 7 and "podRecords" in bad.json["msg"]


def test_receive_steering(runtime: Runtime, make_ns: Callable[[str], str], node: str,
                          data_dir: str, mode_socket: str | None) -> None:
    pod, plain = make_ns("pod"), make_ns("pod")
    c = conf(data_dir, socket=mode_socket, receiveSteering=True)
    out = runtime.exec("podnet", "ADD", c, "ctr1", pod)
    assert out.code == 0, out.stdout
    result = out.json
    host = result["interfaces"][1]["name"]
    masks = rps_masks(node, host)
    assert masks and set(masks) == {(1 << (os.cpu_count() or 1)) - 1}
    # Without the option the kernel's default: the receiving CPU does the work.
    assert runtime.exec("podnet", "ADD", conf(data_dir, socket=mode_socket), "ctr2",
                        plain).code == 0
    other = next(n for n in links_in(node) if n.startswith("veth") and n != host)
    assert set(rps_masks(node, other)) == {0}

    check = runtime.exec("podnet", "CHECK", {**c, "prevResult": result}, "ctr1", pod)
    assert check.code == 0, check.stdout
    subprocess.run(["ip", "netns", "exec", os.path.basename(node), "sh", "-c",
                    f"echo 0 > /sys/class/net/{host}/queues/rx-0/rps_cpus"], check=True)
    check = runtime.exec("podnet", "CHECK", {**c, "prevResult": result}, "ctr1", pod)
    assert check.code != 0 and check.json["code"] == 100
    assert "receiveSteering" in check.json["msg"]


def test_sysfs_is_its_namespaces(make_ns: Callable[[str], str]) -> None:
    """A device name means the namespace's device: the host's own are not there to touch."""
    ns = make_ns("node")
    with netns.entered(ns):
        fs = sysfs.Sysfs()
    try:
        assert sorted(os.listdir(f"/proc/self/fd/{fs.fd}/class/net")) == ["lo"]
        with pytest.raises(FileNotFoundError):  # read only: were it found, it is the host's
            fs.rps(next(n for n in os.listdir("/sys/class/net") if n != "lo"))
        with pytest.raises(ValueError):
            fs.set_rps("../lo", "1")
        fs.set_rps("lo", "1")
        assert fs.rps("lo") == [1]
    finally:
        fs.close()
