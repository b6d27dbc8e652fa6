"""The runtime's side of CNI: exec a plugin or a conflist as libcni does (tests and the lab)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

from podnet.cni import delegate
from podnet.cni.errors import CNIError


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None


@dataclass
class Runtime:
    """Execs plugins found in `path`, optionally from inside a node's namespace."""

    path: list[str]
    node_netns: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # The node's own file system view, where it differs (a node whose paths a test maps).
    node_mounts: str | None = None

    def find(self, plugin_type: str) -> str:
        return delegate.find(plugin_type, self.path)

    def exec(self, plugin_type: str, command: str, conf: dict[str, Any] | bytes,
             container_id: str = "", netns: str = "", ifname: str = "eth0",
             env: dict[str, str] | None = None) -> Outcome:
        argv = [self.find(plugin_type)]
        enter = [f"--mount={self.node_mounts}"] if self.node_mounts else []
        if self.node_netns:
            enter.append(f"--net={self.node_netns}")
        if enter:  # one nsenter: it opens both before it enters either
            argv = ["nsenter", *enter, *argv]
        full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
                    "CNI_PATH": os.pathsep.join(self.path), **self.extra_env}
        if container_id:
            full_env.update(CNI_CONTAINERID=container_id, CNI_IFNAME=ifname)
        if netns:
            full_env["CNI_NETNS"] = netns
        full_env.update(env or {})
        data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        proc = subprocess.run(argv, input=data, env=full_env, capture_output=True,
                              timeout=120, check=False)
        return Outcome(proc.returncode, proc.stdout.decode(errors="replace"),
                       proc.stderr.decode(errors="replace"))

    def _plugin_conf(self, conflist: dict[str, Any], plugin: dict[str, Any],
                     prev: Any) -> dict[str, Any]:
        conf = dict(plugin)
        conf["name"] = conflist["name"]
        conf["cniVersion"] = conflist["cniVersion"]
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def add_list(self, conflist: dict[str, Any], container_id: str, netns: str,
                 ifname: str = "eth0") -> Any:
        """ADD through the chain, each plugin given the previous result."""
        prev = None
        for plugin in conflist["plugins"]:
            out = self.exec(plugin["type"], "ADD", self._plugin_conf(conflist, plugin, prev),
                            container_id, netns, ifname)
            if out.code != 0:
                self.del_list(conflist, container_id, netns, ifname)
                raise _error(plugin["type"], out)
            prev = out.json
        return prev

    def del_list(self, conflist: dict[str, Any], container_id: str, netns: str,
                 ifname: str = "eth0", prev: Any = None) -> None:
        for plugin in reversed(conflist["plugins"]):
            out = self.exec(plugin["type"], "DEL", self._plugin_conf(conflist, plugin, prev),
                            container_id, netns, ifname)
            if out.code != 0:
                raise _error(plugin["type"], out)

    def check_list(self, conflist: dict[str, Any], container_id: str, netns: str,
                   prev: Any, ifname: str = "eth0") -> None:
        for plugin in conflist["plugins"]:
            out = self.exec(plugin["type"], "CHECK", self._plugin_conf(conflist, plugin, prev),
                            container_id, netns, ifname)
            if out.code != 0:
                raise _error(plugin["type"], out)


def _error(plugin_type: str, out: Outcome) -> CNIError:
    try:
        obj = json.loads(out.stdout)
        return CNIError(int(obj["code"]), f"{plugin_type}: {obj['msg']}", obj.get("details", ""))
    except (ValueError, KeyError, TypeError):
        return CNIError(999, f"{plugin_type} failed (exit {out.code}): {out.stdout}{out.stderr}")
