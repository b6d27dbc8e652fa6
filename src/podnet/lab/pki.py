"""A lab's certificate authority: etcd's server certificate and one client certificate, made
with openssl, so that a lab can run etcd as production does (TLS, client certificates)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certs:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _openssl(*argv: str) -> None:
    subprocess.run(["openssl", *argv], check=True, capture_output=True)


def make_certs(d: Path, server_ips: list[str]) -> Certs:
    """A CA, a server certificate for `server_ips` (every member's) and a client certificate,
    in `d`."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "ca.key"),
             "-out", str(d / "ca.crt"), "-days", "30", "-subj", "/CN=podnet-lab-ca")
    # etcd's own gateway dials etcd with the server certificate: it needs clientAuth too.
    names = ",".join(f"IP:{ip}" for ip in server_ips)
    server = f"subjectAltName={names}\nextendedKeyUsage=serverAuth,clientAuth"
    for name, ext in (("server", server), ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"),
                 "-out", str(d / f"{name}.csr"), "-subj", f"/CN=podnet-{name}")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out",
                 str(d / f"{name}.crt"), "-days", "30", "-extfile", str(d / f"{name}.ext"))
    return Certs(str(d / "ca.crt"), str(d / "server.crt"), str(d / "server.key"),
                 str(d / "client.crt"), str(d / "client.key"))
