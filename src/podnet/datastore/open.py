"""Pick the datastore from its URL."""

from __future__ import annotations

import os
from urllib.parse import urlparse

from podnet.datastore.base import Datastore
from podnet.errors import UserError

FIX = ("give http(s)://HOST:PORT for etcd (every member, comma-separated), or "
       "file:///ABSOLUTE/DIR for a single node")


def check_url(url: str) -> None:
    """Refuse a datastore URL that cannot name a store, before anything is opened."""
    try:
        parsed = urlparse(url)
        port = parsed.port  # ValueError when out of range
    except ValueError as exc:
        raise UserError(f"datastore URL {url!r} is malformed: {exc}", FIX) from None
    if parsed.scheme == "file":
        # file://relative/x would put relative in the host part and write /x.
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise UserError(f"datastore URL {url!r} is not an absolute file:// URL", FIX)
        return
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"datastore URL {url!r} is not an etcd or file URL", FIX)
    if port == 0 or parsed.path not in ("", "/"):
        raise UserError(f"datastore URL {url!r} is not http(s)://HOST:PORT", FIX)


def open_store(url: str, ca_cert: str | None = None, cert: str | None = None,
               key: str | None = None, user: str | None = None,
               password_file: str | None = None) -> Datastore:
    """The store at `url`; etcd's members may be listed, comma-separated."""
    members = url.split(",")
    for member in members:
        check_url(member)
    if len(members) > 1 and any(urlparse(m).scheme == "file" for m in members):
        raise UserError(f"datastore URL {url!r} lists a file store with others", FIX)
    for flag, path in (("--etcd-ca", ca_cert), ("--etcd-cert", cert), ("--etcd-key", key)):
        if path is not None and not os.path.isfile(path):
            raise UserError(f"{flag} {path} is not a file", "give the path of the PEM file")
    if (cert is None) != (key is None):
        raise UserError("--etcd-cert and --etcd-key come together",
                        "give both, or neither")
    if (user is None) != (password_file is None):
        raise UserError("--etcd-user and --etcd-password-file come together",
                        "give both, or neither")
    password = None
    if password_file is not None:
        try:
            with open(password_file) as fh:
                password = fh.read().rstrip("\n")
        except OSError as exc:
            raise UserError(f"--etcd-password-file {password_file}: {exc.strerror}",
                            "give the file `podnet cluster credentials` wrote") from None
        if not password:
            raise UserError(f"--etcd-password-file {password_file} is empty",
                            "give the file `podnet cluster credentials` wrote")
    if urlparse(url).scheme == "file":
        if user is not None:
            raise UserError("a file store has no users", "drop --etcd-user")
        from podnet.datastore.file import FileStore

        return FileStore(urlparse(url).path)
    from podnet.datastore.etcd import EtcdStore

    return EtcdStore(members, ca_cert=ca_cert, cert=cert, key=key, user=user, password=password)

