"""The agent's nftables table: masquerade pod traffic leaving the cluster, never pod-to-pod,
node-to-pod or pod-to-node; and accept forwarding of pod traffic.

A FORWARD policy of DROP left by other software (iptables' `filter FORWARD`) would still drop
pod traffic after our accept, since every base chain on a hook gets its say; so where that chain
exists, podnet inserts its own accept rules at its top, tagged with a comment.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable

TABLE = "podnet"
TAG = "podnet: allow pod traffic"


def _nft(script: str) -> None:
    proc = subprocess.run(["nft", "-f", "-"], input=script.encode(), capture_output=True,
                          check=False, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"nft: {proc.stderr.decode(errors='replace').strip()}")


def _elements(ips: Iterable[ipaddress.IPv4Address]) -> str:
    items = sorted({str(ip) for ip in ips})
    return f" elements = {{ {', '.join(items)} }}" if items else ""


def apply(cidr: ipaddress.IPv4Network, node_ips: Iterable[ipaddress.IPv4Address]) -> None:
    """(Re)write the whole table atomically."""
    _nft(f"""table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
  set nodes {{ type ipv4_addr;{_elements(node_ips)} }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {cidr} ip daddr != {cidr} ip daddr != @nodes masquerade
  }}
  chain forward {{
    type filter hook forward priority filter - 1; policy accept;
    ip saddr {cidr} accept
    ip daddr {cidr} accept
  }}
}}
""")
    open_foreign_forward(cidr)


def add_node(ip: ipaddress.IPv4Address) -> None:
    _nft(f"add element ip {TABLE} nodes {{ {ip} }}\n")


def remove_node(ip: ipaddress.IPv4Address) -> None:
    # Failing because it is absent already is fine: the point is that it is gone.
    subprocess.run(["nft", "delete", "element", "ip", TABLE, "nodes", f"{{ {ip} }}"],
                   capture_output=True, check=False, timeout=30)


def open_foreign_forward(cidr: ipaddress.IPv4Network) -> None:
    """Accept pod traffic at the top of iptables' FORWARD chain, if that chain exists."""
    proc = subprocess.run(["nft", "-a", "-j", "list", "chain", "ip", "filter", "FORWARD"],
                          capture_output=True, check=False, timeout=30)
    if proc.returncode != 0:
        return
    rules = [i["rule"] for i in json.loads(proc.stdout).get("nftables", []) if "rule" in i]
    if any(r.get("comment") == TAG for r in rules):
        return
    _nft(f'insert rule ip filter FORWARD ip daddr {cidr} accept comment "{TAG}"\n'
         f'insert rule ip filter FORWARD ip saddr {cidr} accept comment "{TAG}"\n')


def remove() -> None:
    subprocess.run(["nft", "delete", "table", "ip", TABLE], capture_output=True, check=False,
                   timeout=30)
