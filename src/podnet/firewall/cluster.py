"""The agent's nftables tables `ip podnet` and `ip6 podnet`, one for each family of the pod
networks and of the underlay:
- masquerade pod traffic leaving the cluster, never pod-to-pod, node-to-pod or pod-to-node (the
  set `nodes` holds every node's IP of the table's family, kept in step with the leases);
- accept forwarding of pod traffic;
- skip connection tracking for pod-to-pod traffic, which is never translated: the tracking the
  masquerade needs otherwise costs every packet between pods (measured: docs/benchmarks.md);
- with an overlay, accept tunnel packets (the VXLAN port) only from known nodes, in the
  underlay's family's table (an IPv6 underlay's table may hold nothing else).

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
from collections.abc import Iterable, Sequence

from podnet.datastore.model import NodeIP
from podnet.firewall import libnft

TABLE = "podnet"
TAG = "podnet: allow pod traffic"


def _elements(ips: Iterable[NodeIP]) -> str:
    items = sorted({str(ip) for ip in ips})
    return f" elements = {{ {', '.join(items)} }}" if items else ""


ULA = ipaddress.IPv6Network("fc00::/7")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_KEYWORD = {4: "ip", 6: "ip6"}  # each family's table family and match keyword


def apply(networks: Sequence[Network], node_ips: Iterable[NodeIP], underlay: int = 4,
          tunnel_match: str | None = None, masquerade6: bool | None = None,
          notrack: bool = True) -> None:
    """(Re)write the tables atomically: one per family of the pod networks or of the
    `underlay` (4 or 6; where the tunnel arrives), each with its family's node addresses.
    `masquerade6`: whether IPv6 pods are masqueraded off-cluster; None: where their network is
    unique local. `notrack` False: NetworkPolicy's table decides which pod-to-pod traffic
    skips tracking (a policed pod's must be tracked)."""
    ips = list(node_ips)
    for version, f in _KEYWORD.items():
        cidr = next((n for n in networks if n.version == version), None)
        if cidr is None and version != underlay:
            with contextlib.suppress(libnft.NftError):
                libnft.run(f"delete table {f} {TABLE}\n")
            continue
        masquerade = version == 4 or (isinstance(cidr, ipaddress.IPv6Network) and (
            cidr.subnet_of(ULA) if masquerade6 is None else masquerade6))
        tunnel = (f"""  chain input {{
    type filter hook input priority filter - 1; policy accept;
    {tunnel_match} {f} saddr != @nodes counter drop comment "tunnel from a non-node"
  }}
""" if tunnel_match and version == underlay else "")
        _table(version, cidr, masquerade,
               f"  set nodes {{ type ipv{version}_addr;"
               f"{_elements(ip for ip in ips if ip.version == version)} }}\n", tunnel, notrack)


def _table(version: int, cidr: Network | None, masquerade: bool, head: str, tail: str,
           notrack: bool) -> None:
    """The table of one family, written anew at once; without a pod network of its family
    only the node set and the tunnel's check."""
    f = _KEYWORD[version]
    untracked = "" if not notrack else f"""  chain notrack_in {{
    type filter hook prerouting priority raw; policy accept;
    {f} saddr {cidr} {f} daddr {cidr} notrack
  }}
  chain notrack_out {{
    type filter hook output priority raw; policy accept;
    {f} saddr {cidr} {f} daddr {cidr} notrack
  }}
"""
    pods = "" if cidr is None else f"""  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    {f"{f} saddr {cidr} {f} daddr != {cidr} {f} daddr != @nodes masquerade" if masquerade else ""}
  }}
{untracked}  chain forward {{
    type filter hook forward priority filter - 1; policy accept;
    {f} saddr {cidr} accept
    {f} daddr {cidr} accept
  }}
"""
    libnft.run(f"""table {f} {TABLE}
delete table {f} {TABLE}
table {f} {TABLE} {{
{head}{pods}{tail}}}
""")
    if cidr is not None:
        open_foreign_forward(cidr)


def add_node(ip: NodeIP) -> None:
    libnft.run(f"add element {_KEYWORD[ip.version]} {TABLE} nodes {{ {ip} }}\n")


def remove_node(ip: NodeIP) -> None:
    # Absent already is fine: the point is that it is gone.
    with contextlib.suppress(libnft.NftError):
        libnft.run(f"delete element {_KEYWORD[ip.version]} {TABLE} nodes {{ {ip} }}\n")


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
