"""`podnet install-cni`: plugin executables a runtime can exec with a clean environment."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from podnet.errors import UserError
from podnet.fsutil import write_atomic

PLUGINS = ("podnet", "podnet-ipam")
DEFAULT_SOCKET = "/run/podnet/cni.sock"

_SCRIPT = """#!{python} -IS
# podnet CNI plugin {plugin!r}, written by `podnet install-cni`.
# -IS: no site, no environment; start-up is part of every pod's start.
import sys
sys.path[:0] = {paths!r}
from podnet.cni.shim import main
main({plugin!r})
"""


def _import_paths() -> list[str]:
    """Where podnet and its netlink library live (site is not imported under -S)."""
    import pyroute2

    import podnet

    paths = [os.path.dirname(os.path.dirname(os.path.abspath(p)))
             for p in (podnet.__file__, pyroute2.__file__)]
    return list(dict.fromkeys(paths))


def example_conflist(name: str = "podnet", subnet: str = "10.244.0.0/24",
                     socket: str = DEFAULT_SOCKET, mtu: int | None = None) -> dict[str, Any]:
    main: dict[str, Any] = {
        "type": "podnet", "bridge": "kube-bridge", "isDefaultGateway": True,
        "socket": socket,
        "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": subnet}]]},
    }
    if mtu:
        main["mtu"] = mtu
    # 1.0.0: the newest version Debian's portmap (chained after podnet) speaks.
    return {"cniVersion": "1.0.0", "name": name, "plugins": [
        main, {"type": "portmap", "capabilities": {"portMappings": True}}]}


def _writable_dir(flag: str, path: str) -> None:
    """Refuse a directory that cannot take the files, before any is written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is not a directory", "give a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {path} cannot be made: {exc.strerror}",
                        "give a directory on a writable file system") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path} is not writable", "give a directory you can write")


def install_cni(bin_dir: str, conf_dir: str | None = None) -> list[str]:
    _writable_dir("--bin-dir", bin_dir)
    if conf_dir:
        _writable_dir("--conf-dir", conf_dir)
    paths = _import_paths()
    written = []
    for plugin in PLUGINS:
        target = os.path.join(bin_dir, plugin)
        write_atomic(target, _SCRIPT.format(python=sys.executable, plugin=plugin, paths=paths),
                      0o755)
        written.append(target)
    if conf_dir:
        target = os.path.join(conf_dir, "10-podnet.conflist")
        write_atomic(target, json.dumps(example_conflist(), indent=2) + "\n", 0o644)
        written.append(target)
    return written
