"""containerd (Debian's 1.6) with its CRI plugin, driven over gRPC as kubelet drives it.

containerd runs in a node's network namespace and in a mount namespace of its own
(`unshare --mount --propagation slave`), so the network namespaces it mounts under its state
dir are not visible to the node's cni-server: the plugin hands them over as descriptors.
Known needs on these machines: `restrict_oom_score_adj` (no CAP_SYS_RESOURCE in the VM),
`loopback` in the CNI bin dir (containerd always runs it), and every sandbox stopped and removed
before containerd stops (its shims outlive it).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from podnet.install import install_cni

PROTO = Path(__file__).with_name("cri.proto")
IMAGE = "localhost/pnpause:1"
APPLETS = ("sh", "sleep", "ping", "nc")


def cri_modules(out: Path) -> tuple[ModuleType, ModuleType]:
    """cri_pb2 and cri_pb2_grpc, compiled from cri.proto into `out`."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    rc = protoc.main(["protoc", f"-I{PROTO.parent}", f"--python_out={out}",
                      f"--grpc_python_out={out}", str(PROTO)])
    if rc != 0:
        raise RuntimeError("protoc failed on cri.proto")
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("cri_pb2"), importlib.import_module("cri_pb2_grpc")
    finally:
        sys.path.remove(str(out))


def _blob(layout: tarfile.TarFile, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    layout.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def sandbox_image(path: Path) -> Path:
    """An OCI image layout (tar) of Debian's static busybox whose process sleeps: the sandbox
    ("pause") image, made here since no registry can be reached."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        tar.add("/bin/busybox", "bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    layer_bytes = layer.getvalue()
    with tarfile.open(path, "w") as out:
        layer_desc = _blob(out, layer_bytes)
        config = json.dumps({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/bin/sleep", "2147483647"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       **_blob(out, config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        **layer_desc}]}).encode()
        index = json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **_blob(out, manifest),
            "annotations": {"io.containerd.image.name": IMAGE,
                            "org.opencontainers.image.ref.name": "1"}}]}).encode()
        for name, data in (("index.json", index),
                           ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return path


CONFIG = """version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{base}/c.sock"
[ttrpc]
  address = "{base}/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"""


class Containerd:
    def __init__(self, node_ns: str, conf_dir: str, pb2: ModuleType, grpc_mod: ModuleType
                 ) -> None:
        # Short: containerd's sockets live here (a unix socket path holds 107 bytes).
        self.base = Path(tempfile.mkdtemp(prefix="pnctrd-", dir="/tmp"))
        self.node_ns, self.conf_dir = node_ns, conf_dir
        self.pb2, self.grpc_mod = pb2, grpc_mod
        self.sock = self.base / "c.sock"
        self.bin_dir = self.base / "bin"
        self.sandboxes: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: Any = None

    def start(self) -> None:
        install_cni(str(self.bin_dir))
        for plugin in ("loopback", "portmap"):  # containerd runs loopback; podnet chains portmap
            os.symlink(f"/usr/lib/cni/{plugin}", self.bin_dir / plugin)
        config = self.base / "config.toml"
        config.write_text(CONFIG.format(base=self.base, image=IMAGE, bin_dir=self.bin_dir,
                                        conf_dir=self.conf_dir))
        with open(self.base / "containerd.log", "wb") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "slave", "nsenter",
                 f"--net={self.node_ns}", "containerd", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start: {self.log()[-2000:]}")
            time.sleep(0.1)
        subprocess.run(["ctr", "--address", str(self.sock), "-n", "k8s.io", "images", "import",
                        str(sandbox_image(self.base / "pause.tar"))], check=True,
                       capture_output=True, timeout=60)
        import grpc

        self.channel = grpc.insecure_channel(f"unix://{self.sock}")

    def log(self) -> str:
        return (self.base / "containerd.log").read_text(errors="replace")

    @property
    def runtime(self) -> Any:
        return self.grpc_mod.RuntimeServiceStub(self.channel)

    def run_sandbox(self, name: str, namespace: str = "default") -> str:
        pb = self.pb2
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace=namespace),
            hostname=name, log_directory=str(self.base / "logs" / name),
            linux=pb.LinuxPodSandboxConfig(cgroup_parent="/podnet-cri-test"))
        reply = self.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=60)
        self.sandboxes.append(reply.pod_sandbox_id)
        return str(reply.pod_sandbox_id)

    def status(self, sandbox: str) -> Any:
        return self.runtime.PodSandboxStatus(
            self.pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox), timeout=30).status

    def remove(self, sandbox: str) -> None:
        pb = self.pb2
        self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox), timeout=60)
        self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox),
                                      timeout=60)
        self.sandboxes.remove(sandbox)

    def stop(self) -> None:
        for sandbox in list(self.sandboxes):
            with contextlib.suppress(Exception):
                self.remove(sandbox)
        if self.channel is not None:
            self.channel.close()
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Shims outlive containerd: whatever still names our socket goes too.
        for pid in _pids_naming(str(self.base)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


def _pids_naming(text: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if text.encode() in fh.read():
                        out.append(int(entry))
            except OSError:
                continue
    return out


@contextlib.contextmanager
def running(node_ns: str, conf_dir: str, gen_dir: Path) -> Iterator[Containerd]:
    pb2, grpc_mod = cri_modules(gen_dir)
    ctrd = Containerd(node_ns, conf_dir, pb2, grpc_mod)
    try:
        ctrd.start()
        yield ctrd
    finally:
        ctrd.stop()
