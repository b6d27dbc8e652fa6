"""`podnet install-cni`: the plugin executables, independent of where podnet is installed.

Each executable is the shim itself (podnet/cni/shim.py, standard library only) run by the
host's python3: a node needs no copy of podnet to relay pods to its agent, which is how a
DaemonSet's init container installs it on hosts that have only python3.
"""

from __future__ import annotations

import os
import subprocess

from podnet.errors import UserError
from podnet.fsutil import write_atomic

PLUGINS = ("podnet", "podnet-ipam")
DEFAULT_SOCKET = "/run/podnet/cni.sock"
DEFAULT_PYTHON = "/usr/bin/python3"

_HEADER = """#!{python} -IS
# podnet CNI plugin {plugin!r}, written by `podnet install-cni` from podnet {version}.
# -IS: no site, no environment; start-up is part of every pod's start.
"""
_TRAILER = """

if __name__ == "__main__":
    # Where podnet was importable at install time: the in-process fallback looks there.
    main({plugin!r}, {fallback!r})
"""


def _import_paths() -> tuple[str, ...]:
    """Where podnet and its netlink library live (site is not imported under -S)."""
    import pyroute2

    import podnet

    paths = [os.path.dirname(os.path.dirname(os.path.abspath(p)))
             for p in (podnet.__file__, pyroute2.__file__)]
    return tuple(dict.fromkeys(paths))


def check_python(python: str, host_root: str = "/") -> None:
    """The host's interpreter runs the shim: it must exist and be new enough. Under
    `host_root` (a container's view of the host) it can only be seen, not run."""
    from podnet.cni import shim

    oldest = ".".join(map(str, shim.OLDEST_PYTHON))
    fix = f"install python3 ({oldest} or later) on the node, or give --python the path of one"
    seen = os.path.join(host_root, python.lstrip("/"))
    if not os.path.isabs(python) or not (os.path.isfile(seen) and os.access(seen, os.X_OK)):
        raise UserError(f"the plugins need {python}, which is not an executable here", fix)
    if os.path.realpath(host_root) != "/":
        return
    try:
        # No -I: an interpreter too old to know it must still say its version.
        out = subprocess.run([python, "-S", "-c", "import sys; sys.stdout.write('%d %d' % "
                              "tuple(sys.version_info[:2]))"], capture_output=True, text=True,
                             timeout=30, check=True, env={}).stdout.split()
        version = (int(out[0]), int(out[1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        raise UserError(f"{python} does not run as a Python interpreter", fix) from None
    if version < shim.OLDEST_PYTHON:
        raise UserError(f"{python} is Python {version[0]}.{version[1]}, older than {oldest}",
                        fix)


def _writable_dir(flag: str, path: str) -> None:
    """Refuse a directory that cannot take the files, before any is written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is not a directory", "give a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {path} cannot be made: {exc.strerror}",
                        "give a directory on a writable file system") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path} is not writable", "give a directory you can write")


def install_cni(bin_dir: str, conf_dir: str | None = None, subnet: str | None = None,
                python: str = DEFAULT_PYTHON, socket: str = DEFAULT_SOCKET,
                host_root: str = "/") -> list[str]:
    """Write the plugins (and, given the node's subnet, a conflist); the paths written."""
    import ipaddress

    from podnet.agent import conflist
    from podnet.cni import shim

    if conf_dir and not subnet:
        raise UserError("a conflist needs the node's pod subnet",
                        "give --subnet, or leave the conflist to the agent, which writes it")
    if subnet:
        try:
            ipaddress.ip_network(subnet)
        except ValueError:
            raise UserError(f"--subnet {subnet!r} is not a network",
                            "give the node's pod subnet, e.g. 10.244.3.0/24") from None
    check_python(python, host_root)
    _writable_dir("--bin-dir", bin_dir)
    if conf_dir:
        _writable_dir("--conf-dir", conf_dir)
    with open(shim.__file__, encoding="utf-8") as fh:
        source = fh.read()
    version = _version()
    fallback = _import_paths()
    written = []
    for plugin in PLUGINS:
        target = os.path.join(bin_dir, plugin)
        text = (_HEADER.format(python=python, plugin=plugin, version=version) + source
                + _TRAILER.format(plugin=plugin, fallback=fallback))
        write_atomic(target, text, 0o755)
        written.append(target)
    if conf_dir and subnet:
        written.append(conflist.write(conf_dir, conflist.render(
            {"bridge": "kube-bridge", "isDefaultGateway": True,
             "ipam": {"type": "podnet-ipam", "subnet": subnet}}, None, socket, None)))
    return written


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("podnet")
    except PackageNotFoundError:
        return "(source tree)"
