"""Pick the datastore from its URL."""

from __future__ import annotations

from urllib.parse import urlparse

from podnet.datastore.base import Datastore


def open_store(url: str, ca_cert: str | None = None, cert: str | None = None,
               key: str | None = None) -> Datastore:
    scheme = urlparse(url).scheme
    if scheme == "file":
        from podnet.datastore.file import FileStore

        return FileStore(urlparse(url).path)
    if scheme in ("http", "https"):
        from podnet.datastore.etcd import EtcdStore

        return EtcdStore(url, ca_cert=ca_cert, cert=cert, key=key)
    raise ValueError(f"unsupported datastore URL {url!r} (http(s):// for etcd, file:// local)")
