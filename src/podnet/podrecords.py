"""The node's record of each pod it wired: who the pod is (Kubernetes' namespace and name from
CNI_ARGS), its addresses and where its network namespace is. The plugin writes one file per
attachment on ADD and removes it on DEL; the agent publishes them to the datastore (so that
`podnet verify` and policy know every pod of the cluster) and probes from them when asked.

The directory sits beside the agent's socket, on /run: a reboot ends every pod, and their
records with them."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from podnet.fsutil import write_atomic

SUFFIX = ".json"


@dataclass(frozen=True)
class PodRecord:
    container_id: str
    ifname: str
    namespace: str  # Kubernetes' (K8S_POD_NAMESPACE); "" when the runtime gave none
    name: str  # K8S_POD_NAME, else the container ID
    addresses: tuple[str, ...]  # CIDR notation, as in the CNI result
    netns: str  # CNI_NETNS as the runtime named it

    @property
    def display(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def ips(self) -> list[str]:
        return [a.split("/")[0] for a in self.addresses]

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"addresses": list(self.addresses)}, sort_keys=True)

    @classmethod
    def from_obj(cls, obj: Any) -> PodRecord:
        """A record from its JSON object; ValueError if it is not one."""
        if not isinstance(obj, dict):
            raise ValueError("a pod record is an object")
        try:
            fields = {k: obj[k] for k in ("container_id", "ifname", "namespace", "name",
                                          "netns")}
            addresses = obj["addresses"]
        except KeyError as exc:
            raise ValueError(f"a pod record lacks {exc}") from None
        if not all(isinstance(v, str) for v in fields.values()) or not (
                isinstance(addresses, list) and all(isinstance(a, str) for a in addresses)):
            raise ValueError("a pod record's fields are strings, its addresses a list of them")
        return cls(addresses=tuple(addresses), **fields)

    @classmethod
    def of_request(cls, container_id: str, ifname: str, args: Mapping[str, str],
                   addresses: list[str], netns: str) -> PodRecord:
        return cls(container_id, ifname, args.get("K8S_POD_NAMESPACE", ""),
                   args.get("K8S_POD_NAME", "") or container_id, tuple(addresses), netns)


def write(directory: str, key: str, record: PodRecord) -> None:
    """`key` names the attachment (the host veth's name: unique per container and ifname)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    write_atomic(os.path.join(directory, key + SUFFIX), record.to_json(), 0o600)


def remove(directory: str, key: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(directory, key + SUFFIX))


def read_all(directory: str) -> dict[str, PodRecord]:
    """Every record by key; a file that is not one (a half-written temporary) is skipped."""
    out: dict[str, PodRecord] = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return out
    for name in names:
        if not name.endswith(SUFFIX):
            continue
        try:
            with open(os.path.join(directory, name)) as fh:
                out[name[:-len(SUFFIX)]] = PodRecord.from_obj(json.load(fh))
        except (OSError, ValueError):
            continue
    return out
