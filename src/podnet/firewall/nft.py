"""Running nft in a namespace, and the per-pod masquerade of the plugin's `ipMasq` option."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable
from typing import Any

from podnet.cni.errors import IO_FAILURE, CNIError

Runner = Callable[[list[str], bytes], "subprocess.CompletedProcess[bytes]"]

TABLE = "podnet_cni"
CHAIN = "postrouting"


def apply(run: Runner, script: str) -> None:
    proc = run(["nft", "-f", "-"], script.encode())
    if proc.returncode != 0:
        raise CNIError(IO_FAILURE, f"nft: {proc.stderr.decode(errors='replace').strip()}")


def list_json(run: Runner, *what: str) -> list[dict[str, Any]]:
    proc = run(["nft", "-a", "-j", "list", *what], b"")
    if proc.returncode != 0:
        return []
    items: list[dict[str, Any]] = json.loads(proc.stdout or b"{}").get("nftables", [])
    return items


def masq_tag(network: str, container_id: str, ifname: str) -> str:
    return f"{network}:{container_id}:{ifname}"


def add_masq(run: Runner, tag: str, addresses: list[str]) -> None:
    """Masquerade traffic from the pod's addresses to anywhere outside their subnets."""
    lines = [f"add table inet {TABLE}",
             f"add chain inet {TABLE} {CHAIN} {{ type nat hook postrouting priority srcnat; "
             "policy accept; }"]
    for addr in addresses:
        iface = ipaddress.ip_interface(addr)
        fam = "ip" if iface.version == 4 else "ip6"
        lines.append(f'add rule inet {TABLE} {CHAIN} {fam} saddr {iface.ip} {fam} daddr != '
                     f'{iface.network} masquerade comment "{tag}"')
    apply(run, "\n".join(lines) + "\n")


def del_masq(run: Runner, keep: Callable[[str], bool]) -> None:
    """Delete the masquerade rules whose tag `keep` rejects."""
    handles = [item["rule"]["handle"] for item in list_json(run, "chain", "inet", TABLE, CHAIN)
               if "rule" in item and not keep(str(item["rule"].get("comment", "")))]
    if handles:
        apply(run, "".join(f"delete rule inet {TABLE} {CHAIN} handle {h}\n" for h in handles))
