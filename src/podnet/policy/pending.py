"""New pods not yet judged by NetworkPolicy: `inet podnet_pending`, whose set the CNI plugin puts
a pod's addresses in during its ADD, before the pod can send or be reached, and the agent takes
them out once the node's rules hold the pod. Until then nothing is forwarded from or to them:
a pod a deny policy selects gets no packet through before its policy is in place. Pods wired
before the agent enforced policy (an upgrade) are never pending."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable

from podnet.firewall import libnft

TABLE = "podnet_pending"
_T = f"inet {TABLE}"


def _by_family(addresses: Iterable[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {4: [], 6: []}
    for a in addresses:
        ip = ipaddress.ip_interface(a).ip
        out[ip.version].append(str(ip))
    return out


def ensure() -> None:
    """The table, its sets kept as they are (pods held while no agent ran stay held)."""
    lines = [f"add table {_T}",
             f"add set {_T} pending4 {{ type ipv4_addr; }}",
             f"add set {_T} pending6 {{ type ipv6_addr; }}",
             f"add chain {_T} forward {{ type filter hook forward priority filter - 4; "
             "policy accept; }",
             f"flush chain {_T} forward"]
    for kw, f in (("ip", 4), ("ip6", 6)):
        lines += [f"add rule {_T} forward {kw} saddr @pending{f} counter drop",
                  f"add rule {_T} forward {kw} daddr @pending{f} counter drop"]
    libnft.run("\n".join(lines) + "\n")


def hold(addresses: Iterable[str], run: libnft.Runner = libnft.run) -> bool:
    """The plugin's, at ADD: False where the node has no such table (no agent ever enforced
    policy here: nothing to wait for)."""
    lines = [f"add element {_T} pending{f} {{ {', '.join(ips)} }}"
             for f, ips in _by_family(addresses).items() if ips]
    try:
        run("\n".join(lines) + "\n")
    except libnft.NftError:
        return False
    return True


def release(addresses: Iterable[str], run: libnft.Runner = libnft.run) -> None:
    """Out of the set, whether they were in it or not (added, then deleted, in one
    transaction: nft 1.0.6 has no `destroy`). `run`: an open libnft.Session's where someone
    waits for the release (a context closed after a deletion waits for the kernel)."""
    lines = []
    for f, ips in _by_family(addresses).items():
        if ips:
            items = f"{{ {', '.join(ips)} }}"
            lines += [f"add element {_T} pending{f} {items}",
                      f"delete element {_T} pending{f} {items}"]
    if lines:
        run("\n".join(lines) + "\n")


def remove() -> None:
    with contextlib.suppress(libnft.NftError):  # never made, or gone already
        libnft.run(f"delete table {_T}\n")
