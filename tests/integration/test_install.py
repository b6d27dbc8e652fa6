"""`podnet install-cni` writes plugins that depend on nothing but the host's python3: the shim
is one standard-library file, tested with the oldest interpreter this machine has; with no
server and no podnet to fall back on it answers "try again later" naming the socket."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from podnet.cni import shim
from podnet.cni.invoke import Runtime
from podnet.errors import UserError
from podnet.install import install_cni
from tests.integration.test_bridge_plugin import allocated, conf


def _version(python: str) -> tuple[int, int]:
    out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


def pythons() -> list[str]:
    """The host's python3 and the oldest interpreter here that the shim supports."""
    found = [p for p in glob.glob("/root/.pyenv/versions/3.*/bin/python3") if os.access(
        p, os.X_OK)]
    supported = sorted((p for p in found if _version(p) >= shim.OLDEST_PYTHON), key=_version)
    return ["/usr/bin/python3", *supported[:1]]


@pytest.mark.parametrize("python", pythons())
def test_the_shim_runs_with_the_hosts_python(python: str, node: str, cni_server: str,
                                             data_dir: str, make_ns: object,
                                             tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    install_cni(str(bin_dir), python=python)
    text = (bin_dir / "podnet").read_text()
    assert text.startswith(f"#!{python} -IS\n")
    rt = Runtime(path=[str(bin_dir), "/usr/lib/cni"], node_netns=node)
    version = rt.exec("podnet", "VERSION", {"cniVersion": "1.1.0"})
    assert json.loads(version.stdout)["supportedVersions"] == list(shim.VERSIONS)
    pod = make_ns("pod")  # type: ignore[operator]
    c = conf(data_dir, socket=cni_server)
    out = rt.exec("podnet", "ADD", c, "py1", pod)
    assert out.code == 0, out.stdout + out.stderr
    assert rt.exec("podnet", "DEL", c, "py1", pod).code == 0
    assert allocated(data_dir) == []


def test_the_shim_is_one_module_compiled_once(tmp_path: Path) -> None:
    """The executables import the shim, whose bytecode install-cni compiled with the host's
    python: a pod's start compiles nothing. An older release's shim is gone."""
    shim_dir = tmp_path / "bin" / "podnet.d"
    (shim_dir / "__pycache__").mkdir(parents=True)
    old = "podnet_cni_shim_0123456789abcdef"
    (shim_dir / f"{old}.py").write_text("older release\n")
    (shim_dir / "__pycache__" / f"{old}.cpython-311.pyc").write_bytes(b"")
    module = Path(install_cni(str(tmp_path / "bin"))[0])
    assert module.parent == shim_dir
    assert module.read_text() == Path(shim.__file__).read_text()
    assert [p.name for p in shim_dir.glob("*.py")] == [module.name]
    cached = list((shim_dir / "__pycache__").iterdir())
    assert [p.name.split(".")[0] for p in cached] == [module.stem]
    before = cached[0].stat().st_mtime_ns
    out = Runtime(path=[str(tmp_path / "bin")]).exec("podnet", "VERSION", {"cniVersion": "1.1.0"})
    assert json.loads(out.stdout)["supportedVersions"] == list(shim.VERSIONS)
    assert cached[0].stat().st_mtime_ns == before


def test_no_server_and_no_podnet_is_try_again_later(node: str, tmp_path: Path,
                                                    data_dir: str) -> None:
    # The oldest interpreter cannot import podnet (3.11 code): nothing to fall back on.
    old = pythons()[-1]
    if _version(old) >= (3, 11):
        pytest.skip("no interpreter older than podnet's own here")
    bin_dir = tmp_path / "bin"
    install_cni(str(bin_dir), python=old)
    rt = Runtime(path=[str(bin_dir), "/usr/lib/cni"], node_netns=node)
    gone = str(tmp_path / "no-agent.sock")
    out = rt.exec("podnet", "ADD", conf(data_dir, socket=gone, version="1.0.0"), "py2", node)
    assert out.code != 0 and "Traceback" not in out.stderr
    err = json.loads(out.stdout)
    assert err["code"] == 11 and err["cniVersion"] == "1.0.0"
    assert f"no cni-server answers at {gone}" in err["msg"]


@pytest.mark.parametrize("python,message", [
    ("/nonexistent/python3", "not an executable here"),
    ("python3", "not an executable here"),
    ("PLAIN", "not an executable here"),
    ("/bin/true", "does not run as a Python interpreter"),
])
def test_install_refuses_a_host_without_python(tmp_path: Path, python: str,
                                               message: str) -> None:
    if python == "PLAIN":  # a file without execute bits
        python = str(tmp_path / "python3")
        Path(python).write_text("#!/bin/sh\n")
    with pytest.raises(UserError, match=re.escape(message)):
        install_cni(str(tmp_path / "bin"), python=python)
    assert not (tmp_path / "bin").exists()


def test_install_refuses_a_python_too_old(tmp_path: Path) -> None:
    olds = [p for p in glob.glob("/root/.pyenv/versions/2.*/bin/python") if os.access(p, os.X_OK)]
    if not olds:
        pytest.skip("no Python 2 here")
    with pytest.raises(UserError, match=r"older than 3\.6"):
        install_cni(str(tmp_path / "bin"), python=olds[0])


def test_a_conflist_only_with_the_nodes_subnet(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="needs the node's pod subnet"):
        install_cni(str(tmp_path / "bin"), str(tmp_path / "net.d"))
    assert not (tmp_path / "bin").exists() and not (tmp_path / "net.d").exists()
    with pytest.raises(UserError, match="is not a network"):
        install_cni(str(tmp_path / "bin"), str(tmp_path / "net.d"), subnet="10.244.3.0/33")
    written = install_cni(str(tmp_path / "bin"), str(tmp_path / "net.d"),
                          subnet="10.244.3.0/24")
    conflist = json.loads(Path(written[-1]).read_text())
    assert conflist["plugins"][0]["ipam"]["subnet"] == "10.244.3.0/24"
    assert "mtu" not in conflist["plugins"][0]
