"""`podnet install-cni`: plugin executables a runtime can exec with a clean environment."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

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


def install_cni(bin_dir: str, conf_dir: str | None = None) -> list[str]:
    os.makedirs(bin_dir, exist_ok=True)
    paths = _import_paths()
    written = []
    for plugin in PLUGINS:
        target = os.path.join(bin_dir, plugin)
        write_atomic(target, _SCRIPT.format(python=sys.executable, plugin=plugin, paths=paths),
                      0o755)
        written.append(target)
    if conf_dir:
        os.makedirs(conf_dir, exist_ok=True)
        target = os.path.join(conf_dir, "10-podnet.conflist")
        write_atomic(target, json.dumps(example_conflist(), indent=2) + "\n", 0o644)
        written.append(target)
    return written
