"""The backends podnet knows, by name: the options each reads from the cluster's config (checked
when the config is made), the class that runs it (imported only when one is made), and what the
lab must build for it. Adding a backend is its module and its entry here; nothing else names
backends."""

from __future__ import annotations

import importlib
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from podnet.backends.base import Backend

Check = Callable[[Any], "str | None"]  # None, or what the option takes


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _int_in(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return None if ok else f"an integer from {low} to {high}"
    return check


def _one_of(*choices: str) -> Check:
    return lambda value: None if value in choices else " or ".join(map(repr, choices))


def _address(version: int) -> Check:
    def check(value: Any) -> str | None:
        try:
            ok = ipaddress.ip_address(value).version == version
        except ValueError:
            ok = False
        return None if ok else f"an IPv{version} address"
    return check


@dataclass(frozen=True)
class Spec:
    name: str
    module: str  # podnet.backends.<module>
    cls: str
    options: Mapping[str, Check]  # beyond `type`; each has `fastPath` and `ipv6Masquerade`
    # The nodes' default gateway routes the pod subnets (the lab builds a router for it).
    routed_by_gateway: bool = False
    dual_stack: bool = False  # carries IPv6 pods beside IPv4 ones
    # Runs over an IPv6 underlay (nodes reached at IPv6 addresses), carrying both families.
    ipv6_underlay: bool = False

    def backend_class(self) -> type[Backend]:
        cls: type[Backend] = getattr(importlib.import_module(f"podnet.backends.{self.module}"),
                                     self.cls)
        return cls


_COMMON: dict[str, Check] = {"fastPath": _flag, "ipv6Masquerade": _flag}
SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("l2", "l2", "L2Backend", _COMMON, dual_stack=True, ipv6_underlay=True),
    Spec("host-gw", "hostgw", "HostGwBackend", _COMMON, dual_stack=True, ipv6_underlay=True),
    Spec("gateway", "gateway", "GatewayBackend",
         {**_COMMON, "mode": _one_of("bgp", "static"), "router": _address(4),
          "router6": _address(6),
          "routerAS": _int_in(1, 4294967295), "nodeAS": _int_in(1, 4294967295)},
         routed_by_gateway=True, dual_stack=True, ipv6_underlay=True),
    Spec("vxlan", "vxlan", "VxlanBackend",
         {**_COMMON, "vni": _int_in(1, 16777215), "port": _int_in(1, 65535),
          "directRouting": _flag, "txChecksumOffload": _flag}, dual_stack=True,
         ipv6_underlay=True),
    Spec("gre", "gre", "GreBackend", _COMMON),
)}
NAMES = tuple(SPECS)


def spec(name: str) -> Spec:
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r} (choose one of {', '.join(NAMES)})") from None
