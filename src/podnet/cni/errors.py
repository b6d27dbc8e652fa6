"""The spec's error object and its well-known codes."""

from __future__ import annotations

from typing import Any

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
TRY_AGAIN_LATER = 11
# STATUS: the plugin cannot serve ADD now (50), or existing pods may have lost connectivity (51).
NOT_AVAILABLE = 50
NOT_AVAILABLE_LIMITED_CONNECTIVITY = 51
# Codes from 100 up are the plugin's own.
CHECK_MISMATCH = 100
IPAM_EXHAUSTED = 101
NETLINK_FAILURE = 102
INTERNAL = 999


class CNIError(Exception):
    """An error the plugin reports as the spec's error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        obj: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            obj["details"] = self.details
        return obj

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CNIError:
        """An error object printed by a delegated plugin."""
        return cls(int(obj.get("code", INTERNAL)), str(obj.get("msg", "")),
                   str(obj.get("details", "")))
