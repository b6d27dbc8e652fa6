"""Labs for tests: uniquely named, always taken down (also when a test fails)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from podnet.lab.lab import Lab, down, status
from podnet.lab.topology import Topology, netns_prefix
from podnet.netlink import netns
from podnet.verify.check import Report, endpoints_of, run

MakeLab = Callable[..., Lab]


@pytest.fixture
def make_lab() -> Iterator[MakeLab]:
    made: list[str] = []

    def make(backend: str = "vxlan", nodes: int = 3, pods: int = 2, underlay: str = "switch",
             reconcile: float = 2.0, gateway_mode: str = "bgp", fast_path: bool = True,
             agent_image: str = "", etcd_members: int = 1) -> Lab:
        name = f"t{uuid.uuid4().hex[:6]}"
        made.append(name)
        topo = Topology.make(name, backend, nodes, pods, underlay)
        topo.reconcile_interval = reconcile
        topo.gateway_mode = gateway_mode
        topo.fast_path = fast_path
        topo.agent_image = agent_image
        topo.etcd_tls = bool(agent_image)
        topo.etcd_members = etcd_members
        lab = Lab(topo)
        lab.up()
        return lab

    yield make
    for name in made:
        down(name)
        assert netns.listed(netns_prefix(name)) == []


def verify(lab: Lab) -> Report:
    st = status(lab)
    mtu = lab.conflist(lab.topo.nodes[0])["plugins"][0].get("mtu") if lab.topo.nodes else None
    return run(endpoints_of(st), st, mtu)


def failures(report: Report) -> list[str]:
    out = [f"{p.src}->{p.dst}: {p.why}" for p in report.pairs if not p.ok]
    out += [f"MTU {m['src']}->{m['dst']}" for m in report.mtu if not m["ok"]]
    return out
