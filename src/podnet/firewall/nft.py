"""The CNI plugin's per-pod rules: masquerade (`ipMasq`) and anti-spoofing on the pod's bridge
port. Both run in the node's namespace (the caller's host context), through `run`: the host
context's open libnft.Session in the plugin."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable

from podnet.firewall import libnft

MASQ_TABLE = "podnet_cni"
MASQ_CHAIN = "postrouting"
SPOOF_TABLE = "podnet_antispoof"


def masq_tag(network: str, container_id: str, ifname: str) -> str:
    return f"{network}:{container_id}:{ifname}"


def add_masq(tag: str, addresses: list[str], run: libnft.Runner = libnft.run) -> None:
    """Masquerade traffic from the pod's addresses to anywhere outside their subnets."""
    lines = [f"add table inet {MASQ_TABLE}",
             f"add chain inet {MASQ_TABLE} {MASQ_CHAIN} {{ type nat hook postrouting priority "
             "srcnat; policy accept; }"]
    for addr in addresses:
        iface = ipaddress.ip_interface(addr)
        fam = "ip" if iface.version == 4 else "ip6"
        lines.append(f'add rule inet {MASQ_TABLE} {MASQ_CHAIN} {fam} saddr {iface.ip} {fam} '
                     f'daddr != {iface.network} masquerade comment "{tag}"')
    run("\n".join(lines) + "\n")


def del_masq(keep: Callable[[str], bool], run: libnft.Runner = libnft.run) -> None:
    """Delete the masquerade rules whose tag `keep` rejects."""
    handles = [item["rule"]["handle"]
               for item in libnft.list_json("chain", "inet", MASQ_TABLE, MASQ_CHAIN, run=run)
               if "rule" in item and not keep(str(item["rule"].get("comment", "")))]
    if handles:
        run("".join(f"delete rule inet {MASQ_TABLE} {MASQ_CHAIN} handle {h}\n"
                    for h in handles))


def add_antispoof(port: str, mac: str, addresses: list[str],
                  run: libnft.Runner = libnft.run) -> None:
    """Frames entering the bridge from the pod's port must carry its MAC and its addresses.

    One chain per port, reached through a verdict map keyed by port name, so a pod's rules are
    added and removed by name, never by searching the ruleset.
    """
    v4 = [str(ipaddress.ip_interface(a).ip) for a in addresses if ":" not in a]
    v6 = [str(ipaddress.ip_interface(a).ip) for a in addresses if ":" in a]
    t = f"bridge {SPOOF_TABLE}"
    rules = [f"ether saddr != {mac} drop",
             f"ether type ip ip saddr != {{ {', '.join(v4)} }} drop" if v4
             else "ether type ip drop",
             f"ether type arp arp saddr ether != {mac} drop",
             f"ether type arp arp saddr ip != {{ {', '.join(v4)} }} drop" if v4
             else "ether type arp drop",
             # Any link-local source and DAD's unspecified one (the table's set: a prefix in
             # each pod's rule would make an interval set per pod, which nftables reads in
             # full before every change, 37 us each), else the pod's own.
             "ether type ip6 ip6 saddr != @linklocal6 "
             + (f"ip6 saddr != {{ {', '.join(v6)} }} " if v6 else "") + "drop",
             # A neighbour advertisement for an address not the pod's (its link-local aside)
             # would take that address's traffic: the target sits 8 bytes into the message.
             "ether type ip6 icmpv6 type nd-neighbor-advert @th,64,16 & 0xffc0 != 0xfe80 "
             + (f"@th,64,128 != {{ {', '.join(_hex128(a) for a in v6)} }} " if v6 else "")
             + "drop"]
    own = "\n".join([
        f"add chain {t} {port}",
        f"flush chain {t} {port}",  # a chain left by a DEL that never came: refilled
        *(f"add rule {t} {port} {r}" for r in rules),
        f'add element {t} ports {{ "{port}" : jump {port} }}',
    ]) + "\n"
    try:
        run(own)
    except libnft.NftError:  # the node's first pod: no table yet
        _make_antispoof_table(run)
        run(own)


def _make_antispoof_table(run: libnft.Runner) -> None:
    """The table, its map of ports, its set of link-local sources and the hook's one rule.
    Made once, not rewritten by every ADD: no ADD deletes a rule, as closing the netlink
    socket of a transaction that deleted anything waits for the kernel to free it (a grace
    period, 12-15 ms here). `create` fails where a concurrent ADD made the chain first, so the
    rule is never doubled."""
    t = f"bridge {SPOOF_TABLE}"
    run("\n".join([
        f"add table {t}",
        f"add map {t} ports {{ type ifname : verdict; }}",
        f"add set {t} linklocal6 {{ type ipv6_addr; flags interval; "
        "elements = { fe80::/10, :: }; }"]) + "\n")
    with contextlib.suppress(libnft.NftError):
        run(f"create chain {t} prerouting {{ type filter hook prerouting priority -300; "
            f"policy accept; }}\nadd rule {t} prerouting iifname vmap @ports\n")


def _hex128(address: str) -> str:
    return f"0x{int(ipaddress.IPv6Address(address)):032x}"


def del_antispoof(port: str, run: libnft.Runner = libnft.run) -> None:
    t = f"bridge {SPOOF_TABLE}"
    cmds = [f'delete element {t} ports {{ "{port}" }}', f"delete chain {t} {port}"]
    try:
        run("\n".join(cmds) + "\n")
    except libnft.NftError:  # one of them gone already: DEL is idempotent
        for cmd in cmds:
            with contextlib.suppress(libnft.NftError):
                run(cmd + "\n")


def remove_tables() -> None:
    """Remove the plugin's tables (the node leaves the cluster)."""
    for table in (f"inet {MASQ_TABLE}", f"bridge {SPOOF_TABLE}"):
        with contextlib.suppress(libnft.NftError):  # never made, or gone already
            libnft.run(f"delete table {table}\n")
