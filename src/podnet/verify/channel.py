"""`podnet verify` over the datastore: the keys and messages between verify and the agents, so
that a cluster no lab built is verified the way a lab is, with no port opened for it and etcd's
own authentication guarding it.

One run (its keys of verify's own on a lease of its own, revoked at the end; an agent's on its
node's lease, as etcd lets a node's user attach keys only to a lease whose keys it may write,
and deleted by it at the end):
  /podnet/verify/<id>                     the request: {"port", "timeout", "family"}
  /podnet/answers/<node>/<id>/ready       the agent's echo servers are up in its node and pods:
                                          {"problems"} names what it cannot serve (a pod whose
                                          namespace is gone)
  /podnet/verify/<id>/go                  {"targets"}: every endpoint of the nodes that answered
  /podnet/answers/<node>/<id>/result      the agent's probes from its node and pods to every
                                          target, its pods' own addresses, its MTU probes and
                                          what it lacks towards each peer
An agent writes only under its own node's name, which a node's etcd role allows.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from podnet.datastore.etcd import ANSWERS, VERIFY
from podnet.verify.check import Endpoint

READY, RESULT = "ready", "result"


def request_key(run: str) -> str:
    return VERIFY + run


def go_key(run: str) -> str:
    return VERIFY + run + "/go"


def answer_key(node: str, run: str, step: str) -> str:
    return f"{ANSWERS}{node}/{run}/{step}"


def split_request(k: str) -> tuple[str, bool] | None:
    """(run, whether it is the go) of a key under VERIFY; None for any other."""
    if not k.startswith(VERIFY):
        return None
    run, slash, rest = k[len(VERIFY):].partition("/")
    if not run or (slash and rest != "go"):
        return None
    return run, bool(slash)


def answers(kvs: dict[str, str], run: str, step: str) -> dict[str, str]:
    """The answers of one step of a run, by node, from the keys under ANSWERS."""
    out: dict[str, str] = {}
    for k, raw in kvs.items():
        node, _, tail = k[len(ANSWERS):].partition("/")
        if k.startswith(ANSWERS) and tail == f"{run}/{step}":
            out[node] = raw
    return out


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
