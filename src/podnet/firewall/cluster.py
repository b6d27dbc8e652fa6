"""The agent's nftables table `ip podnet`:
- masquerade pod traffic leaving the cluster, never pod-to-pod, node-to-pod or pod-to-node (the
  set `nodes` holds every node's IP, kept in step with the leases);
- accept forwarding of pod traffic;
- skip connection tracking for pod-to-pod traffic, which is never translated: the tracking the
  masquerade needs otherwise costs every packet between pods (measured: docs/benchmarks.md);
- with an overlay, accept tunnel packets (the VXLAN port) only from known nodes.

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


def apply(cidr: ipaddress.IPv4Network, node_ips: Iterable[ipaddress.IPv4Address],
          tunnel_match: str | None = None) -> None:
    """(Re)write the whole table atomically."""
    tunnel = (f"""  chain input {{
    type filter hook input priority filter - 1; policy accept;
    {tunnel_match} ip saddr != @nodes counter drop comment "tunnel from a non-node"
  }}
""" if tunnel_match else "")
    libnft.run(f"""table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
  set nodes {{ type ipv4_addr;{_elements(node_ips)} }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {cidr} ip daddr != {cidr} ip daddr != @nodes masquerade
  }}
  chain notrack_in {{
    type filter hook prerouting priority raw; policy accept;
    ip saddr {cidr} ip daddr {cidr} notrack
  }}
  chain notrack_out {{
    type filter hook output priority raw; policy accept;
    ip saddr {cidr} ip daddr {cidr} notrack
  }}
  chain forward {{
    type filter hook forward priority filter - 1; policy accept;
    ip saddr {cidr} accept
    ip daddr {cidr} accept
  }}
{tunnel}}}
""")
    open_foreign_forward(cidr)


def add_node(ip: ipaddress.IPv4Address) -> None:
    libnft.run(f"add element ip {TABLE} nodes {{ {ip} }}\n")


def remove_node(ip: ipaddress.IPv4Address) -> None:
    # Absent already is fine: the point is that it is gone.
    with contextlib.suppress(libnft.NftError):
        libnft.run(f"delete element ip {TABLE} nodes {{ {ip} }}\n")


def open_foreign_forward(cidr: ipaddress.IPv4Network) -> None:
    """Accept pod traffic at the top of iptables' FORWARD chain, if that chain exists."""
    items = libnft.list_json("chain", "ip", "filter", "FORWARD")
    if not items:
        return
    if any(i["rule"].get("comment") == TAG for i in items if "rule" in i):
        return
    libnft.run(f'insert rule ip filter FORWARD ip daddr {cidr} accept comment "{TAG}"\n'
               f'insert rule ip filter FORWARD ip saddr {cidr} accept comment "{TAG}"\n')


def remove() -> None:
    with contextlib.suppress(libnft.NftError):
        libnft.run(f"delete table ip {TABLE}\n")
