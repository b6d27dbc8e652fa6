"""The datastore's command-line options, as every command that opens the store takes them
(kept apart from open.py so that building the parser imports nothing of the store)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from podnet.datastore.base import Datastore


def add_args(p: argparse.ArgumentParser, default: str | None = "http://127.0.0.1:2379") -> None:
    p.add_argument("--etcd", "--datastore", dest="etcd", default=default,
                   help="etcd's URL (http[s]://HOST:PORT; every member, comma-separated: a "
                        "request goes to the next when one does not answer) or file:///DIR for "
                        "a single node")
    p.add_argument("--etcd-ca", help="CA certificate to verify etcd with")
    p.add_argument("--etcd-cert", help="client certificate for etcd")
    p.add_argument("--etcd-key", help="client certificate key for etcd")
    p.add_argument("--etcd-user", help="etcd user, where etcd has authentication on (a node's "
                                       "own: `podnet cluster credentials`)")
    p.add_argument("--etcd-password-file", help="a file holding --etcd-user's password")


def from_args(args: argparse.Namespace) -> Datastore:
    from podnet.datastore.open import open_store

    return open_store(args.etcd, ca_cert=args.etcd_ca, cert=args.etcd_cert, key=args.etcd_key,
                      user=args.etcd_user, password_file=args.etcd_password_file)
