"""host-local's on-disk store: `<dataDir>/<network>/<ip>` holding "<containerID>\\r\\n<ifname>",
`last_reserved_ip.<rangeset index>`, and a `lock` file taken with flock, so podnet-ipam and the
reference host-local can share one directory.

Finding an attachment's addresses means reading every allocation (as host-local does), on every
ADD and DEL. A long-lived process (the cni-server) can `remember_reads`: it then reads a
directory once and afterwards only the files inotify reports changed, by whichever process.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from podnet.ipam.config import IPAddress

if TYPE_CHECKING:
    from podnet.ipam.watch import Watch

LINE_BREAK = "\r\n"
LAST_PREFIX = "last_reserved_ip."
LOCK_NAME = "lock"


def _is_allocation(name: str) -> bool:
    return name[:1].isdigit() or ":" in name  # not lock, last_reserved_ip.N, temporaries


class Store:
    def __init__(self, data_dir: str, network: str) -> None:
        self.dir = os.path.join(data_dir, network)

    @contextlib.contextmanager
    def locked(self) -> Iterator[Store]:
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        fd = os.open(os.path.join(self.dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(fd)  # closing drops the flock

    def _path(self, ip: IPAddress) -> str:
        return os.path.join(self.dir, str(ip))

    def reserve(self, container_id: str, ifname: str, ip: IPAddress, rangeset: int) -> bool:
        try:
            fd = os.open(self._path(ip), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write((container_id + LINE_BREAK + ifname).encode())
        self._set_last_reserved(rangeset, ip)
        return True

    def _set_last_reserved(self, rangeset: int, ip: IPAddress) -> None:
        """Overwritten in place, neither renamed over nor truncated to nothing: ext4 flushes a
        file replaced either way (auto_da_alloc), a quarter of a millisecond of every ADD. A
        torn write is only a bad hint of where the next search starts (a reader, holding the
        lock, then starts at the range's beginning)."""
        data = str(ip).encode()
        fd = os.open(os.path.join(self.dir, LAST_PREFIX + str(rangeset)),
                     os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def last_reserved(self, rangeset: int) -> IPAddress | None:
        try:
            with open(os.path.join(self.dir, LAST_PREFIX + str(rangeset))) as fh:
                return ipaddress.ip_address(fh.read().strip())
        except (OSError, ValueError):
            return None

    def allocations(self) -> Iterator[tuple[IPAddress, str, str]]:
        """Every (ip, container id, ifname) on disk."""
        for name, data in self._contents().items():
            try:
                ip = ipaddress.ip_address(name)
            except ValueError:
                continue
            cid, _, ifname = data.decode("utf-8", "replace").partition(LINE_BREAK)
            yield ip, cid.strip(), ifname.strip()

    def get_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        # Compared as bytes, without parsing. Files written before ifnames were recorded hold
        # the container id alone.
        wanted = {(container_id + LINE_BREAK + ifname).encode(), container_id.encode()}
        out: list[IPAddress] = []
        for name, data in self._contents().items():
            if data in wanted:
                try:
                    out.append(ipaddress.ip_address(name))
                except ValueError:
                    continue
        return out

    def _contents(self) -> Mapping[str, bytes]:
        """Every allocation file's content by name: as remembered (`remember_reads`), or read
        now. The caller holds the lock."""
        try:
            dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        try:
            return (_remembered.contents(self.dir, dir_fd) if _remembered is not None
                    else _read_all(dir_fd))
        finally:
            os.close(dir_fd)

    def release(self, ip: IPAddress) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._path(ip))

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        released = self.get_by_id(container_id, ifname)
        for ip in released:
            self.release(ip)
        return released


def _content(name: str, dir_fd: int) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.read(fd, 1024).strip()
    finally:
        os.close(fd)


def _read_all(dir_fd: int) -> dict[str, bytes]:
    """Every allocation's content by file name (each opened relative to the directory)."""
    out = {}
    for name in os.listdir(dir_fd):
        if _is_allocation(name) and (data := _content(name, dir_fd)) is not None:
            out[name] = data
    return out


class _Remembered:
    """Store directories' allocations as this process read them, kept current by inotify."""

    def __init__(self, watch: Watch) -> None:
        import threading  # not at the top: the exec'd podnet-ipam has no use for it

        self.watch = watch
        self.lock = threading.Lock()  # one inotify queue for every directory and thread
        self.dirs: dict[str, dict[str, bytes]] = {}
        self.dirty: dict[str, set[str]] = {}

    def contents(self, directory: str, dir_fd: int) -> Mapping[str, bytes]:
        """`_read_all` of the directory; the caller holds its store lock, so every change
        another process made is queued, and none is being made."""
        with self.lock:
            changes = self.watch.changes()
            for gone in changes.anew:
                self.dirs.pop(gone, None)
            for changed, names in changes.names.items():
                if changed in self.dirs:
                    self.dirty.setdefault(changed, set()).update(names)
            known = self.dirs.get(directory)
            if known is None:
                try:
                    self.watch.add(directory)  # before the reading: no change falls between
                except OSError:  # no watch to spare (fs.inotify.max_user_watches)
                    return _read_all(dir_fd)
                self.dirty.pop(directory, None)
                known = self.dirs[directory] = _read_all(dir_fd)
            for name in self.dirty.pop(directory, set()):
                data = _content(name, dir_fd) if _is_allocation(name) else None
                if data is None:
                    known.pop(name, None)
                else:
                    known[name] = data
            return known


_remembered: _Remembered | None = None


def remember_reads() -> None:
    """From now on this process reads each store directory in full once, then only the
    files changed since (the cni-server: an ADD costs the same with 10 pods or 200). OSError
    where no inotify instance can be made (fs.inotify.max_user_instances): every lookup then
    reads all files, as before."""
    global _remembered
    from podnet.ipam.watch import Watch

    if _remembered is None:
        _remembered = _Remembered(Watch())
