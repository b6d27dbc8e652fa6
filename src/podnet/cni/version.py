"""Supported spec versions and conversion of results between them.

Results are held internally in the 1.x shape; 0.3.x/0.4.0 differ only in the `version` key of
each IP config, which is derived from the address, and in lacking STATUS/GC and (before
0.4.0) CHECK.
"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

from podnet.cni.errors import DECODE_FAILURE, INCOMPATIBLE_VERSION, CNIError

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"

Result = dict[str, Any]


def parse(version: str) -> tuple[int, int, int]:
    try:
        major, minor, patch = (int(p) for p in version.split("."))
    except ValueError:
        raise CNIError(INCOMPATIBLE_VERSION, f"invalid version {version!r}") from None
    return major, minor, patch


def check_supported(version: str) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI versions; config is {version!r}, plugin supports "
            f"{list(SUPPORTED_VERSIONS)}",
        )


def allows(version: str, command: str) -> bool:
    """Whether a config of this version may use the command (CHECK from 0.4.0, STATUS/GC 1.1.0)."""
    if command == "CHECK":
        return parse(version) >= (0, 4, 0)
    if command in ("STATUS", "GC"):
        return parse(version) >= (1, 1, 0)
    return True


def version_info() -> dict[str, Any]:
    return {"cniVersion": LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)}


def to_internal(result: Any) -> Result:
    """Read a result of any supported version (e.g. a prevResult) into the 1.x shape."""
    if not isinstance(result, dict):
        raise CNIError(DECODE_FAILURE, "result is not a JSON object")
    out: Result = copy.deepcopy(result)
    for key in ("interfaces", "ips", "routes"):
        if key in out and not isinstance(out[key], list):
            raise CNIError(DECODE_FAILURE, f"result field {key!r} is not a list")
    for ip in out.get("ips", []):
        if not isinstance(ip, dict) or "address" not in ip:
            raise CNIError(DECODE_FAILURE, "result IP config without an address")
        ip.pop("version", None)
        try:
            ipaddress.ip_interface(ip["address"])
        except ValueError:
            raise CNIError(DECODE_FAILURE, f"bad address {ip['address']!r} in result") from None
    return out


def convert(result: Result, version: str) -> Result:
    """Write an internal result in the shape of `version` (a copy: the entries of its lists
    are what changes)."""
    out: Result = dict(result)
    for key in ("interfaces", "ips", "routes"):
        if key in out:
            out[key] = [dict(entry) for entry in out[key]]
    out["cniVersion"] = version
    if parse(version) < (1, 0, 0):
        for ip in out.get("ips", []):
            ip["version"] = str(ipaddress.ip_interface(ip["address"]).version)
    else:
        for ip in out.get("ips", []):
            ip.pop("version", None)
    if parse(version) < (1, 1, 0):
        # Interface and route fields new in 1.1.0 must not leak into older results.
        for iface in out.get("interfaces", []):
            for key in ("mtu", "socketPath", "pciID"):
                iface.pop(key, None)
        for route in out.get("routes", []):
            for key in ("mtu", "advmss", "priority", "table", "scope"):
                route.pop(key, None)
    return out
