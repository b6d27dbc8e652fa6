"""Delegation to another plugin (IPAM) found through CNI_PATH, as libcni's invoke does."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from podnet.cni import version as cniver
from podnet.cni.errors import INVALID_NETWORK_CONFIG, IO_FAILURE, CNIError
from podnet.cni.protocol import Request

# Our own IPAM runs in-process: same code, same on-disk store, without a second exec.
IN_PROCESS = "podnet-ipam"


def find(plugin_type: str, path: list[str]) -> str:
    if "/" in plugin_type or plugin_type in (".", ".."):
        raise CNIError(INVALID_NETWORK_CONFIG, f"invalid plugin type {plugin_type!r}")
    for directory in path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(INVALID_NETWORK_CONFIG,
                   f"failed to find plugin {plugin_type!r} in path {path}")


def ipam_type(req: Request) -> str:
    ipam = req.config.get("ipam")
    if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str) or not ipam["type"]:
        raise CNIError(INVALID_NETWORK_CONFIG, "network config lacks an 'ipam' with a 'type'")
    return str(ipam["type"])


def call(req: Request, plugin_type: str, command: str, config: dict[str, Any] | None = None
         ) -> cniver.Result | None:
    """Run `command` of `plugin_type` with the request's environment; a result for ADD."""
    conf = req.config if config is None else config
    if plugin_type == IN_PROCESS:
        return _call_in_process(req, command, conf)
    exe = find(plugin_type, req.path)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    env.update(req.env)
    env["CNI_COMMAND"] = command
    try:
        proc = subprocess.run([exe], input=json.dumps(conf).encode(), env=env,
                              capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CNIError(IO_FAILURE, f"running plugin {plugin_type}: {exc}") from None
    return _parse_output(plugin_type, proc.returncode, proc.stdout, proc.stderr)


def _call_in_process(req: Request, command: str, conf: dict[str, Any]) -> cniver.Result | None:
    from podnet.ipam.plugin import HANDLERS  # only the IPAM half, no netlink

    sub = Request(command=command, container_id=req.container_id, netns=req.netns,
                  ifname=req.ifname, args=req.args, path=req.path, config=conf, env=req.env)
    return HANDLERS[command](sub)  # already in the internal shape: no copy, no re-check


def _parse_output(plugin_type: str, code: int, stdout: bytes, stderr: bytes
                  ) -> cniver.Result | None:
    if code != 0:
        try:
            err = json.loads(stdout)
        except ValueError:
            err = None
        if isinstance(err, dict) and "code" in err:
            raise CNIError.from_json(err)
        raise CNIError(IO_FAILURE, f"plugin {plugin_type} failed (exit {code}): "
                       f"{(stdout or stderr).decode(errors='replace').strip()[:500]}")
    if not stdout.strip():
        return None
    try:
        return cniver.to_internal(json.loads(stdout))
    except ValueError:
        raise CNIError(IO_FAILURE, f"plugin {plugin_type} printed no valid result") from None
