"""etcd with TLS and client certificates (made here), the real server: podnet connects with
them and is refused without them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from podnet.datastore.etcd import EtcdStore
from podnet.lab import pki
from podnet.netlink import netns

URL = "https://127.0.0.1:23790"


@pytest.fixture
def tls_etcd(make_ns: Callable[[str], str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ns = make_ns("etcd")
    subprocess.run(["nsenter", f"--net={ns}", "ip", "link", "set", "lo", "up"], check=True)
    pki.make_certs(tmp_path, ["127.0.0.1"])
    proc = subprocess.Popen(
        ["nsenter", f"--net={ns}", "etcd", "--data-dir", str(tmp_path / "data"),
         "--listen-client-urls", URL, "--advertise-client-urls", URL,
         "--listen-peer-urls", "http://127.0.0.1:23800",
         "--initial-advertise-peer-urls", "http://127.0.0.1:23800",
         "--initial-cluster", "default=http://127.0.0.1:23800",
         "--cert-file", str(tmp_path / "server.crt"), "--key-file", str(tmp_path / "server.key"),
         "--client-cert-auth", "--trusted-ca-file", str(tmp_path / "ca.crt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = EtcdStore(URL, ca_cert=str(tmp_path / "ca.crt"), cert=str(tmp_path / "client.crt"),
                      key=str(tmp_path / "client.key"))
    deadline = time.monotonic() + 20
    while True:
        with netns.entered(ns):
            if store.healthy():
                break
        assert time.monotonic() < deadline, "etcd with TLS did not start"
        time.sleep(0.2)
    yield ns, tmp_path
    proc.terminate()
    proc.wait(10)


def podnet(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={ns}", sys.executable, "-m", "podnet", *argv],
                          capture_output=True, text=True, timeout=60, check=False)


def test_client_certificates_required(tls_etcd: tuple[str, Path]) -> None:
    ns, d = tls_etcd
    certs = ["--etcd-ca", str(d / "ca.crt"), "--etcd-cert", str(d / "client.crt"),
             "--etcd-key", str(d / "client.key")]
    init = ["cluster", "init", "--etcd", URL, "--cidr", "10.244.0.0/16", "--backend", "vxlan"]
    refused = podnet(ns, *init, "--etcd-ca", str(d / "ca.crt"))
    assert refused.returncode != 0 and "etcd unreachable" in refused.stderr
    assert "Traceback" not in refused.stderr
    ok = podnet(ns, *init, *certs)
    assert ok.returncode == 0, ok.stderr
    shown = podnet(ns, "cluster", "show", "--etcd", URL, *certs)
    assert "10.244.0.0/16" in shown.stdout


def test_agent_connects_with_certificates(tls_etcd: tuple[str, Path],
                                          make_ns: Callable[[str], str]) -> None:
    ns, d = tls_etcd
    certs = ["--etcd-ca", str(d / "ca.crt"), "--etcd-cert", str(d / "client.crt"),
             "--etcd-key", str(d / "client.key")]
    assert podnet(ns, "cluster", "init", "--etcd", URL, "--cidr", "10.244.0.0/16",
                  "--backend", "host-gw", *certs).returncode == 0
    subprocess.run(["nsenter", f"--net={ns}", "ip", "addr", "add", "192.168.50.1/24", "dev",
                    "lo"], check=True)
    agent = subprocess.Popen(
        ["nsenter", f"--net={ns}", sys.executable, "-m", "podnet", "agent", "--etcd", URL,
         *certs, "--node-name", "tls1", "--node-ip", "192.168.50.1", "--cni-conf-dir",
         str(d / "net.d"), "--cni-socket", str(d / "cni.sock"), "--state-dir",
         str(d / "state"), "--metrics", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(d / "net.d" / "10-podnet.conflist"):
            assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.1)
        shown = podnet(ns, "cluster", "show", "--etcd", URL, *certs)
        assert "tls1" in shown.stdout and "192.168.50.1" in shown.stdout
    finally:
        agent.terminate()
        agent.wait(10)
