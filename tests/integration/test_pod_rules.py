"""The plugin's per-pod nftables rules as the kernel takes them: the anti-spoofing table's
hook rule made once however many pods start at once, kept by every later ADD (an ADD that
rewrote it would delete a rule, and wait for the kernel when its socket closes), and a pod's
rules gone with its DEL, a second DEL finding nothing to do."""

from __future__ import annotations

import json
import threading

from podnet.firewall import libnft, nft
from podnet.netlink import netns
from tests.conftest import ns_run

MAC = "02:00:00:00:00:01"


def hook_rules(node: str) -> list[int]:
    out = ns_run(node, "nft", "-j", "-a", "list", "chain", "bridge", nft.SPOOF_TABLE,
                 "prerouting").stdout
    return [item["rule"]["handle"] for item in json.loads(out)["nftables"] if "rule" in item]


def test_antispoof_hook_made_once_and_pod_rules_removed(node: str) -> None:
    def add(i: int) -> None:
        with netns.entered(node), libnft.Session() as session:
            nft.add_antispoof(f"vethp{i}", MAC, [f"10.1.0.{i + 2}/24"], run=session.run)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = hook_rules(node)
    assert len(first) == 1  # the first ADDs raced to make the table: one rule
    add(8)
    assert hook_rules(node) == first  # a later ADD keeps it
    ports = ns_run(node, "nft", "list", "map", "bridge", nft.SPOOF_TABLE, "ports").stdout
    assert all(f'"vethp{i}" : jump vethp{i}' in ports for i in range(9))

    with netns.entered(node):
        for i in range(9):
            nft.del_antispoof(f"vethp{i}")
        nft.del_antispoof("vethp0")  # again: nothing left, no error
    table = ns_run(node, "nft", "list", "table", "bridge", nft.SPOOF_TABLE).stdout
    assert "vethp" not in table
    assert hook_rules(node) == first
