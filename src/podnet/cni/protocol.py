"""The plugin process contract: CNI_* environment, config on stdin, result or error on stdout."""

from __future__ import annotations

import json
import os
import re
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet.cni import version as cniver
from podnet.cni.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INTERNAL,
    INVALID_ENV,
    INVALID_NETWORK_CONFIG,
    CNIError,
)

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
_NEEDS_CONTAINER = ("ADD", "DEL", "CHECK")
_NEEDS_NETNS = ("ADD", "CHECK")
# The spec's rule for container IDs and network names; interface names follow the kernel's.
_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_IFNAME_MAX = 15
DEFAULT_LOG = "/var/log/podnet/cni.log"


@dataclass
class Request:
    """One invocation of a plugin: the validated environment and network config."""

    command: str
    container_id: str = ""
    netns: str = ""  # CNI_NETNS as the runtime named it: what results report
    # Where to enter the pod's namespace: CNI_NETNS itself in the plugin's own process; the
    # descriptor the shim sent when served (the runtime's path may not exist for the server);
    # "" when it is gone.
    enter: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    stdin: bytes = b""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def cni_version(self) -> str:
        return str(self.config.get("cniVersion", cniver.LATEST))

    @property
    def prev_result(self) -> cniver.Result | None:
        prev = self.config.get("prevResult")
        return None if prev is None else cniver.to_internal(prev)


def valid_ifname(name: str) -> bool:
    return (0 < len(name) <= _IFNAME_MAX and name not in (".", "..")
            and not any(c in name for c in "/: \t\n\r\x00"))


def parse_args(raw: str) -> dict[str, str]:
    """CNI_ARGS: `K=V;K=V`."""
    out: dict[str, str] = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CNIError(INVALID_ENV, f"CNI_ARGS: invalid pair {pair!r}")
        out[key] = value
    return out


def parse_env(env: Mapping[str, str]) -> Request:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CNIError(INVALID_ENV, f"CNI_COMMAND is {command!r}; expected one of {COMMANDS}")
    req = Request(command=command, env={k: v for k, v in env.items() if k.startswith("CNI_")})
    if command in _NEEDS_CONTAINER:
        req.container_id = env.get("CNI_CONTAINERID", "")
        if not _ID_RE.match(req.container_id):
            raise CNIError(INVALID_ENV, f"CNI_CONTAINERID {req.container_id!r} is missing or "
                           "invalid (letters, digits, '_', '.', '-')")
        req.ifname = env.get("CNI_IFNAME", "")
        if not valid_ifname(req.ifname):
            raise CNIError(INVALID_ENV, f"CNI_IFNAME {req.ifname!r} is missing or not a valid "
                           "interface name")
        req.netns = env.get("CNI_NETNS", "")
        if command in _NEEDS_NETNS and not req.netns:
            raise CNIError(INVALID_ENV, f"CNI_NETNS is required for {command}")
        if req.netns and not req.netns.startswith("/"):
            raise CNIError(INVALID_ENV, f"CNI_NETNS {req.netns!r} is not an absolute path")
        req.enter = req.netns
        if not env.get("CNI_PATH"):
            raise CNIError(INVALID_ENV, f"CNI_PATH is required for {command}")
    req.path = [p for p in env.get("CNI_PATH", "").split(os.pathsep) if p]
    req.args = parse_args(env.get("CNI_ARGS", ""))
    return req


def parse_config(req: Request, stdin: bytes) -> None:
    req.stdin = stdin
    try:
        config = json.loads(stdin or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CNIError(DECODE_FAILURE, f"failed to decode network config: {exc}") from None
    if not isinstance(config, dict):
        raise CNIError(DECODE_FAILURE, "network config is not a JSON object")
    req.config = config
    ver = config.get("cniVersion")
    if not isinstance(ver, str):
        raise CNIError(INVALID_NETWORK_CONFIG, "network config lacks a string cniVersion")
    if req.command == "VERSION":
        return
    cniver.check_supported(ver)
    if not cniver.allows(ver, req.command):
        raise CNIError(INCOMPATIBLE_VERSION, f"config version {ver} does not allow {req.command}")
    name = config.get("name")
    if not isinstance(name, str) or not _ID_RE.match(name):
        raise CNIError(INVALID_NETWORK_CONFIG, f"network name {name!r} is missing or invalid")
    if not isinstance(config.get("type"), str) or not config["type"]:
        raise CNIError(INVALID_NETWORK_CONFIG, "network config lacks a plugin type")


Handler = Callable[[Request], "cniver.Result | None"]


def log(message: str, path: str | None = None) -> None:
    """Append to the plugin log; never to stdout, and a log that cannot be written is no error."""
    target = path or os.environ.get("PODNET_LOG", DEFAULT_LOG)
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] {message}\n")
    except OSError:
        pass


def run(handlers: Mapping[str, Handler], env: Mapping[str, str], stdin: bytes,
        resolve: Callable[[Request], None] | None = None) -> tuple[int, str]:
    """Run one invocation; returns (exit code, stdout). Never raises. `resolve` (the server's)
    sets where the pod's namespace is entered, or refuses the request with a CNIError."""
    req: Request | None = None
    err_version = cniver.LATEST
    try:
        req = parse_env(env)
        parse_config(req, stdin)
        if req.cni_version in cniver.SUPPORTED_VERSIONS:
            err_version = req.cni_version
        if resolve is not None and req.command != "VERSION":
            resolve(req)
        if req.command == "VERSION":
            return 0, json.dumps(cniver.version_info())
        result = handlers[req.command](req)
        if result is None:
            return 0, ""
        return 0, json.dumps(cniver.convert(result, req.cni_version))
    except CNIError as exc:
        log(f"{env.get('CNI_COMMAND')} {env.get('CNI_CONTAINERID')}: error {exc.code}: {exc.msg}")
        return 1, json.dumps(exc.to_json(err_version))
    except Exception as exc:  # the contract: an error object, never a traceback
        log(f"{env.get('CNI_COMMAND')} {env.get('CNI_CONTAINERID')}: internal error\n"
            + traceback.format_exc())
        err = CNIError(INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        return 1, json.dumps(err.to_json(err_version))
