"""The agent's nftables tables `ip podnet` (and `ip6 podnet` for a dual-stack cluster's IPv6
pods, whose rules are the same less the tunnel's, which arrives over IPv4):
- masquerade pod traffic leaving the cluster, never pod-to-pod, node-to-pod or pod-to-node (the
  set `nodes` holds every node's IP, kept in step with the leases);
- accept forwarding of pod traffic;
- skip connection tracking for pod-to-pod traffic, which is never translated: the tracking the
  masquerade needs otherwise costs every packet between pods (measured: docs/benchmarks.md);
- with an overlay, accept tunnel packets (the VXLAN port) only from known nodes.

IPv6 pods are masqueraded off-cluster by default only where their network is unique local
(fc00::/7), which no router beyond the cluster would route back; a global prefix is routed as it
is (`cluster init --ipv6-masquerade on|off` decides otherwise).

A FORWARD policy of DROP left by other software (iptables' `filter FORWARD`) would still drop
pod traffic after our accept, since every base chain on a hook gets its say; so where that chain
exists, podnet inserts its own accept rules at its top, tagged with a comment.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable

from podnet.firewall import libnft

TABLE = "podnet"
TAG = "podnet: allow pod traffic"


def _elements(ips: Iterable[ipaddress.IPv4Address]) -> str:
    items = sorted({str(ip) for ip in ips})
    return f" elements = {{ {', '.join(items)} }}" if items else ""


ULA = ipaddress.IPv6Network("fc00::/7")


def apply(cidr: ipaddress.IPv4Network, node_ips: Iterable[ipaddress.IPv4Address],
          tunnel_match: str | None = None, cidr6: ipaddress.IPv6Network | None = None,
          masquerade6: bool | None = None) -> None:
    """(Re)write the tables atomically. `masquerade6`: whether IPv6 pods are masqueraded
    off-cluster; None: where their network is unique local."""
    if cidr6 is not None:
        _apply6(cidr6, cidr6.subnet_of(ULA) if masquerade6 is None else masquerade6)
    else:
        with contextlib.suppress(libnft.NftError):
            libnft.run(f"delete table ip6 {TABLE}\n")
    tunnel = (f"""  chain input {{
    type filter hook input priority filter - 1; policy accept;
    {tunnel_match} ip saddr != @nodes counter drop comment "tunnel from a non-node"
  }}
""" if tunnel_match else "")
    _table("ip", cidr, f"ip saddr {cidr} ip daddr != {cidr} ip daddr != @nodes masquerade",
           f"  set nodes {{ type ipv4_addr;{_elements(node_ips)} }}\n", tunnel)


def _apply6(cidr6: ipaddress.IPv6Network, masquerade: bool) -> None:
    masq = f"ip6 saddr {cidr6} ip6 daddr != {cidr6} masquerade" if masquerade else ""
    _table("ip6", cidr6, masq)


def _table(family: str, cidr: ipaddress.IPv4Network | ipaddress.IPv6Network, masquerade: str,
           head: str = "", tail: str = "") -> None:
    """The table of one family (`ip`, `ip6`: also its match keyword), written anew at once."""
    f = family
    libnft.run(f"""table {f} {TABLE}
delete table {f} {TABLE}
table {f} {TABLE} {{
{head}  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    {masquerade}
  }}
  chain notrack_in {{
    type filter hook prerouting priority raw; policy accept;
    {f} saddr {cidr} {f} daddr {cidr} notrack
  }}
  chain notrack_out {{
    type filter hook output priority raw; policy accept;
    {f} saddr {cidr} {f} daddr {cidr} notrack
  }}
  chain forward {{
    type filter hook forward priority filter - 1; policy accept;
    {f} saddr {cidr} accept
    {f} daddr {cidr} accept
  }}
{tail}}}
""")
    open_foreign_forward(cidr)


def add_node(ip: ipaddress.IPv4Address) -> None:
    libnft.run(f"add element ip {TABLE} nodes {{ {ip} }}\n")


def remove_node(ip: ipaddress.IPv4Address) -> None:
    # Absent already is fine: the point is that it is gone.
    with contextlib.suppress(libnft.NftError):
        libnft.run(f"delete element ip {TABLE} nodes {{ {ip} }}\n")


def open_foreign_forward(cidr: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    """Accept pod traffic at the top of iptables' (or ip6tables') FORWARD chain, if that chain
    exists."""
    family, match = ("ip", "ip") if cidr.version == 4 else ("ip6", "ip6")
    items = libnft.list_json("chain", family, "filter", "FORWARD")
    if not items:
        return
    if any(i["rule"].get("comment") == TAG for i in items if "rule" in i):
        return
    libnft.run(f'insert rule {family} filter FORWARD {match} daddr {cidr} accept comment '
               f'"{TAG}"\ninsert rule {family} filter FORWARD {match} saddr {cidr} accept '
               f'comment "{TAG}"\n')


def remove() -> None:
    for family in ("ip", "ip6"):
        with contextlib.suppress(libnft.NftError):
            libnft.run(f"delete table {family} {TABLE}\n")
