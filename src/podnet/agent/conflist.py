"""The node's CNI conflist, written atomically so a runtime never reads half a file."""

from __future__ import annotations

import json
import os
from typing import Any

from podnet.fsutil import write_atomic

NAME = "podnet"
FILENAME = "10-podnet.conflist"


def render(plugin: dict[str, Any], mtu: int | None, socket: str, data_dir: str | None
           ) -> dict[str, Any]:
    """The conflist of a node; without an MTU the plugin takes the bridge's."""
    main = {"type": "podnet", **plugin, "socket": socket, "antiSpoof": True}
    if mtu is not None:
        main["mtu"] = mtu
    if data_dir:
        main["ipam"] = {**main["ipam"], "dataDir": data_dir}
    # 1.0.0: the newest version Debian's portmap (chained after podnet) speaks.
    return {"cniVersion": "1.0.0", "name": NAME, "plugins": [
        main, {"type": "portmap", "capabilities": {"portMappings": True}}]}


def write(conf_dir: str, conflist: dict[str, Any]) -> str:
    os.makedirs(conf_dir, exist_ok=True)
    path = os.path.join(conf_dir, FILENAME)
    write_atomic(path, json.dumps(conflist, indent=2) + "\n", 0o644, sync=True)
    return path
