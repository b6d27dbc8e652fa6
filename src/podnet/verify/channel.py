"""`podnet verify` over the datastore: the keys and messages between verify and the agents, so
that a cluster no lab built is verified the way a lab is, with no port opened for it and etcd's
own authentication guarding it.

One run, under /podnet/verify/<id>, every key on the etcd lease of verify's own that the request
names (revoking it ends the run and deletes every key):
  <id>               the request: {"lease", "port", "timeout"}
  <id>/ready/<node>  an agent's echo servers are up in its node and pods: {"problems"} names
                     what it cannot serve (a pod whose namespace is gone)
  <id>/go            {"targets"}: every endpoint of the nodes that answered
  <id>/result/<node> the agent's probes from its node and pods to every target, its pods' own
                     addresses, its MTU probes and what it lacks towards each peer
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from podnet.datastore.etcd import VERIFY
from podnet.verify.check import Endpoint

READY, GO, RESULT = "ready", "go", "result"


def key(run: str, step: str = "", node: str = "") -> str:
    return VERIFY + "/".join(p for p in (run, step, node) if p)


def split(k: str) -> tuple[str, str, str] | None:
    """(run, step, node) of a key under VERIFY; None for a key that is not one of a run."""
    if not k.startswith(VERIFY):
        return None
    parts = k[len(VERIFY):].split("/")
    if not parts[0] or len(parts) > 3:
        return None
    run, step, node = [*parts, "", ""][:3]
    return run, step, node


def endpoint_obj(e: Endpoint) -> dict[str, str]:
    """An endpoint as another host sees it: its namespace path means nothing there."""
    return asdict(e) | {"netns": ""}


def endpoint_from(obj: Any) -> Endpoint:
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in
                                            ("name", "kind", "ip", "node")):
        raise ValueError(f"not an endpoint: {obj!r}")
    if obj["kind"] not in ("pod", "node"):
        raise ValueError(f"endpoint kind {obj['kind']!r} is neither pod nor node")
    return Endpoint(obj["name"], obj["kind"], "", obj["ip"], obj["node"])
