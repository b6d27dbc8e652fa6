"""Running the agent as Kubernetes' DaemonSet would (deploy/kubernetes/podnet.yaml): from the
image, with exactly the manifest's command, capabilities, mounts and environment, by podman in
the node's network namespace. The manifest is read, not restated, so that the lab, the tests
and the manifest cannot drift apart."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

# In a checkout, beside src/: the lab runs from one.
MANIFEST = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes" / "podnet.yaml"
CONTAINERS_CONF = """[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""  # what podman needs on these VMs (no CAP_SYS_RESOURCE, no systemd)


# Kubernetes' mount propagation as podman's -v option says it.
PROPAGATION = {"None": "private", "HostToContainer": "rslave", "Bidirectional": "rshared"}


def documents(path: Path = MANIFEST) -> dict[str, Any]:
    import yaml

    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text())}


def pod_spec(path: Path = MANIFEST) -> dict[str, Any]:
    spec: dict[str, Any] = documents(path)["DaemonSet"]["spec"]["template"]["spec"]
    return spec


def host_paths(spec: dict[str, Any]) -> dict[str, str]:
    """Each hostPath volume's path on the node, by volume name."""
    return {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}


def expand(words: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion in a container's command."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], w) for w in words]


def podman_run(container: dict[str, Any], volumes: dict[str, str], env: dict[str, str],
               name: str, options: tuple[str, ...] = ()) -> list[str]:
    """`podman run` of a container of the manifest: its capabilities, mounts, environment and
    command; each volume from the host path given for it (kubelet's hostPath or a Secret's
    directory); `options` are podman's own (-d, --rm). Run it in the node's network namespace:
    the pod has the host's network."""
    sc = container.get("securityContext", {})
    if sc.get("privileged") is not False:
        raise ValueError(f"container {container['name']} must say privileged: false")
    caps = sc.get("capabilities", {})
    argv = ["podman", "run", *options, "--name", name, "--network", "host",
            *(f"--cap-drop={c}" for c in caps.get("drop", [])),
            *(f"--cap-add={c}" for c in caps.get("add", []))]
    for mount in container.get("volumeMounts", []):
        opts = ["ro"] if mount.get("readOnly") else []
        if "mountPropagation" in mount:
            opts.append(PROPAGATION[mount["mountPropagation"]])
        suffix = ":" + ",".join(opts) if opts else ""
        argv += ["-v", f"{volumes[mount['name']]}:{mount['mountPath']}{suffix}"]
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    command = expand(container["command"], env)
    return [*argv, "--entrypoint", command[0], container["image"], *command[1:]]


def containers_conf(directory: str) -> dict[str, str]:
    """The environment podman runs with: a containers.conf for these machines."""
    path = os.path.join(directory, "containers.conf")
    with open(path, "w") as fh:
        fh.write(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": path}
