"""Which files of watched directories changed since the last look: inotify.

A process that reads a directory's files again and again (the cni-server, the IPAM store's
allocations on every ADD and DEL) reads once, then only what the kernel reports as made,
written, moved or removed. The kernel queues an event within the call that changes the file,
so a writer's changes are all queued once it has dropped a lock the reader then takes. An
overflowing queue, or a watched directory removed or moved, means reading it all again.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from podnet.libc import checked, libc

IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x8, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR = 0x4000, 0x8000, 0x1000000
_FILES = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len; then the name, NUL-padded to len


@dataclass
class Changes:
    """Since the last look: changed file names per directory, and directories to read anew."""
    names: dict[str, set[str]] = field(default_factory=dict)
    anew: set[str] = field(default_factory=set)


class Watch:
    """One inotify instance watching any number of directories (not their subdirectories)."""

    def __init__(self) -> None:
        self.fd = checked(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")
        self.dirs: dict[int, str] = {}  # watch descriptor -> directory

    def add(self, directory: str) -> None:
        """Watch `directory` from now on (watching it again is harmless)."""
        wd = checked(libc.inotify_add_watch(self.fd, os.fsencode(directory),
                                             _FILES | _GONE | IN_ONLYDIR), "inotify_add_watch")
        self.dirs[wd] = directory

    def changes(self) -> Changes:
        """Everything queued, drained."""
        out = Changes()
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            pos = 0
            while pos < len(data):
                wd, mask, _cookie, size = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size:pos + _EVENT.size + size].rstrip(b"\0")
                pos += _EVENT.size + size
                if mask & IN_Q_OVERFLOW:
                    out.anew.update(self.dirs.values())
                    continue
                directory = self.dirs.get(wd)
                if directory is None:
                    continue
                if mask & _GONE:
                    # The directory at that path is another one now, or none: a new watch
                    # is made when it is next read (the kernel ends this one, IN_IGNORED).
                    out.anew.add(directory)
                    del self.dirs[wd]
                    if not mask & IN_IGNORED:
                        libc.inotify_rm_watch(self.fd, wd)
                elif name:
                    out.names.setdefault(directory, set()).add(os.fsdecode(name))

    def close(self) -> None:
        os.close(self.fd)
