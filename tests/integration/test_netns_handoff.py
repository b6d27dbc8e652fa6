"""The cni-server enters the pod's namespace by the descriptor the plugin hands it, never by
the runtime's path: a runtime in a mount namespace of its own (containerd's state dir, a
DaemonSet beside the host's runtime) names a path that is only an empty file to the server.
Hostile descriptors are refused and wire nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from podnet.cni import shim
from tests.conftest import links_in
from tests.integration.test_bridge_plugin import allocated, conf

# Runs in a mount namespace of its own: binds a new network namespace over an empty file that
# the server (outside) sees as just that, wires a pod there through the installed plugin, and
# reports what it saw.
RUNTIME = textwrap.dedent("""
    import json, subprocess, sys
    from podnet.cni.invoke import Runtime
    cni_bin, node, pod, conf = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    subprocess.run(["unshare", f"--net={pod}", "true"], check=True)
    rt = Runtime(path=[cni_bin, "/usr/lib/cni"], node_netns=node)
    add = rt.exec("podnet", "ADD", conf, "priv1", pod)
    out = {"add": add.json, "add_code": add.code}
    if add.code == 0:
        ip = add.json["ips"][0]["address"].split("/")[0]
        out["pod_addr"] = subprocess.run(["nsenter", f"--net={pod}", "ip", "-o", "-4", "addr",
                                          "show", "eth0"], capture_output=True, text=True).stdout
        out["ping"] = subprocess.run(["nsenter", f"--net={node}", "ping", "-c1", "-W2", ip],
                                     capture_output=True).returncode
        out["check"] = rt.exec("podnet", "CHECK", {**conf, "prevResult": add.json}, "priv1",
                               pod).code
        out["del"] = rt.exec("podnet", "DEL", conf, "priv1", pod).code
        subprocess.run(["umount", pod], check=True)  # the namespace is gone now
        out["del_gone"] = rt.exec("podnet", "DEL", conf, "priv1", pod).code
    print(json.dumps(out))
""")


def test_server_wires_a_namespace_it_cannot_see(node: str, cni_bin: str, cni_server: str,
                                                data_dir: str, tmp_path: Path) -> None:
    pod = tmp_path / "netns-pod"
    pod.touch()  # to the server: an empty file (containerd's "setns: Invalid argument")
    c = conf(data_dir, socket=cni_server)
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                           "-c", RUNTIME, cni_bin, node, str(pod), json.dumps(c)],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["add_code"] == 0, seen["add"]
    assert seen["add"]["interfaces"][2]["sandbox"] == str(pod)  # the runtime's own path
    ip = seen["add"]["ips"][0]["address"]
    assert ip.startswith("10.88.0.") and ip in seen["pod_addr"]
    assert seen["ping"] == 0 and seen["check"] == 0 and seen["del"] == 0
    assert seen["del_gone"] == 0  # DEL of a namespace that no longer exists succeeds
    assert allocated(data_dir) == []
    assert not [n for n in links_in(node) if n.startswith("veth")]
    assert os.path.getsize(pod) == 0  # still just a file here: nothing leaked out


def _raw_request(sock_path: str, env: dict[str, str], stdin: bytes,
                 fds: list[int]) -> tuple[int, dict[str, object]]:
    """A request as a client of our own writes it: the wire format with chosen descriptors."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(sock_path)
        socket.send_fds(sock, [shim.encode_request(env, stdin)], fds)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\n")
    return int(head), json.loads(body)


@pytest.mark.parametrize("kind", ["file", "mount-ns", "pid-ns", "none", "three"])
def test_hostile_descriptors_are_refused(node: str, cni_server: str, data_dir: str,
                                         make_ns: Callable[[str], str], tmp_path: Path,
                                         kind: str) -> None:
    pod = make_ns("pod")
    plain = tmp_path / "plain"
    plain.write_text("not a namespace")
    opened = {"file": [str(plain)], "mount-ns": ["/proc/self/ns/mnt"],
              "pid-ns": ["/proc/self/ns/pid"], "none": [],
              "three": [pod, pod, pod]}[kind]
    own = os.open(node, os.O_RDONLY)  # the node's namespace, as the shim sends its own first
    fds = [own, *(os.open(p, os.O_RDONLY) for p in opened)]
    if kind == "none":
        fds = [own]
    try:
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "evil1", "CNI_IFNAME": "eth0",
               "CNI_NETNS": pod, "CNI_PATH": "/usr/lib/cni"}
        code, err = _raw_request(cni_server, env, json.dumps(conf(data_dir)).encode(), fds)
    finally:
        for fd in fds:
            os.close(fd)
    assert code == 1
    want = {"file": (4, "is not a network namespace"), "mount-ns": (4, "not a network"),
            "pid-ns": (4, "not a network"), "none": (3, "could not open it"),
            "three": (4, "more than 2 descriptors")}[kind]
    assert (err["code"], want[1] in str(err["msg"])) == (want[0], True), err
    assert links_in(pod) == ["lo"]
    assert not [n for n in links_in(node) if n.startswith("veth")]
    assert allocated(data_dir) == []
