"""host-local compatible IPAM: config, allocation order, on-disk format."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podnet.cni.errors import CNIError
from podnet.ipam import config as ipamconf
from podnet.ipam import store as storemod
from podnet.ipam.allocator import Allocator, candidates
from podnet.ipam.store import Store
from podnet.ipam.watch import Watch


def parse(ipam: dict[str, Any]) -> ipamconf.IPAMConfig:
    return ipamconf.parse({"name": "net", "ipam": ipam}, {})


def test_legacy_subnet_defaults() -> None:
    conf = parse({"subnet": "10.1.0.0/24"})
    r = conf.range_sets[0].ranges[0]
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.1.0.1", "10.1.0.254", "10.1.0.1")


@pytest.mark.parametrize("ipam,msg", [
    ({}, "no IP ranges"), ({"subnet": "10.0.0.0/31"}, "too small"),
    ({"subnet": "bogus"}, "invalid subnet"),
    ({"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}, "outside subnet"),
    ({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"}, "after"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}, "overlap"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}, "mixes"),
    ({"subnet": "10.0.0.0/24", "dataDir": "relative"}, "absolute"),
    ({"subnet": "10.0.0.0/24", "routes": [{"dst": "x"}]}, "invalid route"),
])
def test_bad_config(ipam: dict[str, Any], msg: str) -> None:
    with pytest.raises(CNIError, match=msg) as err:
        parse(ipam)
    assert err.value.code == 7


def test_candidates_round_robin_skip_gateway() -> None:
    rset = parse({"ranges": [[{"subnet": "10.0.0.0/29"}, {"subnet": "10.0.1.0/30"}]]}
                 ).range_sets[0]
    first = [str(ip) for ip, _ in candidates(rset, None)]
    assert first == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.1.2"]
    after = [str(ip) for ip, _ in candidates(rset, ipaddress.ip_address("10.0.0.5"))]
    assert after == ["10.0.0.6", "10.0.1.2", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]


def test_store_format_matches_host_local(tmp_path: Path) -> None:
    store = Store(str(tmp_path), "net")
    conf = parse({"subnet": "10.0.0.0/29"})
    with store.locked():
        Allocator(conf.range_sets[0], 0, store).get("ctr", "eth0", None,
                                                    store.get_by_id("ctr", "eth0"))
    d = tmp_path / "net"
    assert (d / "10.0.0.2").read_bytes() == b"ctr\r\neth0"
    assert (d / "last_reserved_ip.0").read_text() == "10.0.0.2"
    assert os.path.exists(d / "lock")
    with store.locked(), pytest.raises(CNIError, match="duplicate"):
        Allocator(conf.range_sets[0], 0, store).get("ctr", "eth0", None,
                                                    store.get_by_id("ctr", "eth0"))
    (d / "10.0.0.3").write_bytes(b"legacy")  # an id-only file of old host-local versions
    assert store.get_by_id("legacy", "eth0") == [ipaddress.ip_address("10.0.0.3")]


@pytest.fixture
def remembered(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The store as the cni-server uses it; the names of the files it reads."""
    watch = Watch()
    monkeypatch.setattr(storemod, "_remembered", storemod._Remembered(watch))
    reads: list[str] = []
    content = storemod._content

    def counted(name: str, dir_fd: int) -> bytes | None:
        reads.append(name)
        return content(name, dir_fd)

    monkeypatch.setattr(storemod, "_content", counted)
    yield reads
    watch.close()


def test_a_remembering_store_reads_only_what_changed(tmp_path: Path,
                                                     remembered: list[str]) -> None:
    store, d = Store(str(tmp_path), "net"), tmp_path / "net"
    rset = parse({"subnet": "10.0.0.0/24"}).range_sets[0]
    ip = ipaddress.ip_address
    with store.locked():
        for cid in ("a", "b", "c"):
            Allocator(rset, 0, store).get(cid, "eth0", None, [])
        assert store.get_by_id("a", "eth0") == [ip("10.0.0.2")]
        remembered.clear()
        assert store.get_by_id("b", "eth0") == [ip("10.0.0.3")]
        assert remembered == []  # nothing changed: nothing read
    # Other processes (host-local sharing the directory) change files in every way.
    (d / "10.0.0.2").write_bytes(b"x\r\neth0")  # rewritten in place: the same inode
    (d / "10.0.0.3").unlink()
    (d / "10.0.0.3").write_bytes(b"y\r\neth0")  # removed and made again
    (d / "10.0.0.4").unlink()
    (d / "10.0.0.9").write_bytes(b"a\r\neth0")
    (d / "10.0.0.8.tmp").write_bytes(b"b\r\neth0")
    os.rename(d / "10.0.0.8.tmp", d / "10.0.0.8")
    with store.locked():
        assert store.get_by_id("a", "eth0") == [ip("10.0.0.9")]
        assert store.get_by_id("x", "eth0") == [ip("10.0.0.2")]
        assert store.get_by_id("y", "eth0") == [ip("10.0.0.3")]
        assert store.get_by_id("b", "eth0") == [ip("10.0.0.8")]
        assert store.get_by_id("c", "eth0") == []
        assert sorted(set(remembered)) == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.8",
                                           "10.0.0.8.tmp", "10.0.0.9"]


def test_a_remembering_store_reads_anew_what_it_lost_track_of(tmp_path: Path,
                                                              remembered: list[str]) -> None:
    store, d = Store(str(tmp_path), "net"), tmp_path / "net"
    rset = parse({"subnet": "10.0.0.0/24"}).range_sets[0]
    with store.locked():
        Allocator(rset, 0, store).get("a", "eth0", None, [])
        assert store.get_by_id("a", "eth0") == [ipaddress.ip_address("10.0.0.2")]
    # The directory replaced: a watch on the new one, all of it read.
    os.rename(d, tmp_path / "old")
    d.mkdir()
    (d / "10.0.0.7").write_bytes(b"a\r\neth0")
    with store.locked():
        assert store.get_by_id("a", "eth0") == [ipaddress.ip_address("10.0.0.7")]
    # More events than the kernel queues: the change behind the overflow is still seen.
    queued = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    for i in range(queued + 2):
        (d / f"scratch{i % 2}").write_bytes(b"")
    (d / "10.0.0.7").write_bytes(b"z\r\neth0")
    with store.locked():
        assert store.get_by_id("a", "eth0") == []
        assert store.get_by_id("z", "eth0") == [ipaddress.ip_address("10.0.0.7")]


def test_exhaustion_and_requested_ip(tmp_path: Path) -> None:
    store = Store(str(tmp_path), "net")
    rset = parse({"subnet": "10.0.0.0/30"}).range_sets[0]
    with store.locked():
        alloc = Allocator(rset, 0, store)
        assert str(alloc.get("a", "eth0", None, store.get_by_id("a", "eth0"))[0]) == "10.0.0.2"
        with pytest.raises(CNIError, match="no IP addresses available") as err:
            alloc.get("b", "eth0", None, store.get_by_id("b", "eth0"))
        assert err.value.code == 101
        with pytest.raises(CNIError, match="not available"):
            alloc.get("c", "eth0", ipaddress.ip_address("10.0.0.2"), store.get_by_id("c", "eth0"))


def test_requested_ips_from_args() -> None:
    conf = ipamconf.parse({"name": "n", "ipam": {"subnet": "10.0.0.0/24"},
                           "args": {"cni": {"ips": ["10.0.0.9"]}}}, {"IP": "10.0.0.7"})
    assert [str(i) for i in conf.requested] == ["10.0.0.7", "10.0.0.9"]
