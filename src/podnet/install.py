"""`podnet install-cni`: the plugin executables, independent of where podnet is installed.

Each executable runs the shim (podnet/cni/shim.py, standard library only) with the host's
python3: a node needs no copy of podnet to relay pods to its agent, which is how a DaemonSet's
init container installs it on hosts that have only python3. The shim is a module in
`<bin-dir>/podnet.d/`, its name carrying a hash of its text, and the executables import it: a
script is compiled on every run (a millisecond of each pod's start), a module's bytecode is
cached beside it, and a new release's shim never meets an older release's cached bytecode.
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess

from podnet.errors import UserError
from podnet.fsutil import write_atomic

PLUGINS = ("podnet", "podnet-ipam")
DEFAULT_SOCKET = "/run/podnet/cni.sock"
DEFAULT_PYTHON = "/usr/bin/python3"

SHIM_DIR = "podnet.d"
_SHIM_PREFIX = "podnet_cni_shim_"
_LAUNCHER = """#!{python} -IS
# podnet CNI plugin {plugin!r}, written by `podnet install-cni` from podnet {version}.
# -IS: no site, no environment; start-up is part of every pod's start.
import sys
sys.path.insert(0, (__file__.rpartition("/")[0] or ".") + "/{shim_dir}")
from {module} import main
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
    shim_dir = os.path.join(bin_dir, SHIM_DIR)
    module = _install_shim(shim_dir, python, host_root)
    version = _version()
    fallback = _import_paths()
    written = [os.path.join(shim_dir, module + ".py")]
    for plugin in PLUGINS:
        target = os.path.join(bin_dir, plugin)
        write_atomic(target, _LAUNCHER.format(python=python, plugin=plugin, version=version,
                                              shim_dir=SHIM_DIR, module=module,
                                              fallback=fallback), 0o755)
        written.append(target)
    _remove_other_shims(shim_dir, module)
    if conf_dir and subnet:
        written.append(conflist.write(conf_dir, conflist.render(
            {"bridge": "kube-bridge", "isDefaultGateway": True,
             "ipam": {"type": "podnet-ipam", "subnet": subnet}}, None, socket, None)))
    return written


def _install_shim(shim_dir: str, python: str, host_root: str) -> str:
    """Write the shim's module and, where the host's interpreter runs here, its bytecode
    (elsewhere the first plugin run writes it); the module's name."""
    from podnet.cni import shim

    with open(shim.__file__, "rb") as fh:
        source = fh.read()
    module = _SHIM_PREFIX + hashlib.sha256(source).hexdigest()[:16]
    os.makedirs(shim_dir, mode=0o755, exist_ok=True)
    path = os.path.join(shim_dir, module + ".py")
    write_atomic(path, source.decode("utf-8"), 0o644)
    if os.path.realpath(host_root) == "/":
        try:
            subprocess.run([python, "-I", "-S", "-c", "import py_compile, sys; "
                            "py_compile.compile(sys.argv[1], doraise=True)", path],
                           capture_output=True, check=True, timeout=60, env={})
        except (OSError, subprocess.SubprocessError) as exc:
            raise UserError(f"{python} cannot compile the plugins' shim: {exc}",
                            f"check that {python} is a working Python 3") from None
    return module


def _remove_other_shims(shim_dir: str, module: str) -> None:
    """Earlier releases' shims (the executables no longer name them)."""
    for path in glob.glob(os.path.join(shim_dir, _SHIM_PREFIX + "*")) + glob.glob(
            os.path.join(shim_dir, "__pycache__", _SHIM_PREFIX + "*")):
        if not os.path.basename(path).startswith(module + "."):
            os.remove(path)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("podnet")
    except PackageNotFoundError:
        return "(source tree)"
