"""Per-node etcd credentials: a user and a role per node that may read the cluster but write
only its own keys (its node key, its assigned subnet's lease, its pod records and its answers
to verify), so that a node's leaked password cannot take another node's subnet, change the
config or delete a policy. A node's subnet is assigned when its credentials are made: etcd's
permissions name keys, and a lease's key is its subnet's."""

from __future__ import annotations

import json
import secrets

from podnet.datastore.base import LeaseRefused
from podnet.datastore.etcd import (
    ANSWERS,
    ASSIGNMENTS,
    NODES,
    PODS,
    PREFIX,
    SUBNETS,
    EtcdStore,
    prefix_end,
)
from podnet.datastore.model import NetworkConfig, PodNetwork, subnet_key

USER_PREFIX = "podnet-node-"


def user_of(node: str) -> str:
    return USER_PREFIX + node


def grants(node: str, subnet: PodNetwork) -> list[tuple[str, str, str]]:
    """(type, key, range end) of what node `node` may do: "" as range end is one key."""
    own = [NODES + node, SUBNETS + subnet_key(subnet)]
    prefixes = [f"{PODS}{node}/", f"{ANSWERS}{node}/"]
    return ([("READ", PREFIX, prefix_end(PREFIX))]
            + [("READWRITE", key, "") for key in own]
            + [("READWRITE", p, prefix_end(p)) for p in prefixes])


def choose_subnet(node: str, config: NetworkConfig, assigned: dict[str, PodNetwork],
                  leased: dict[str, PodNetwork]) -> PodNetwork:
    """The node's subnet: its assignment, else the one it leases now, else the first that no
    node leases or is assigned. `leased`: node -> subnet of every lease."""
    if node in assigned:
        return assigned[node]
    if node in leased:
        return leased[node]
    free = config.free_indices({subnet_key(s) for s in [*assigned.values(), *leased.values()]})
    if free:
        return config.subnet_at(free[0])
    raise LeaseRefused(f"no subnet left to assign node {node!r}: all {config.capacity} "
                       f"/{config.subnet_len} subnets of {config.network} are leased or assigned")


def issue(store: EtcdStore, config: NetworkConfig, node: str) -> tuple[str, str,
                                                                        PodNetwork]:
    """The node's user (made, or its password changed), its role and its subnet's
    assignment; (user, password, subnet). Needs credentials that may manage etcd's users."""
    leases, _ = store.snapshot(config)
    leased = {lease.node: lease.subnet for lease in leases.values()}
    subnet = choose_subnet(node, config, store.assignments(), leased)
    store.put(ASSIGNMENTS + node, json.dumps({"subnet": str(subnet)}))
    user = user_of(node)
    store.set_role(user, grants(node, subnet))
    password = secrets.token_urlsafe(24)
    store.set_user(user, password, user)
    return user, password, subnet
