"""`podnet lab diagram`: the live topology, read from the kernel of every node, drawn in the
spirit of the article's figures: pods on each node's bridge, the node's devices and routes, and
the underlay that joins the nodes."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from podnet.lab.lab import Lab, ns_path
from podnet.netlink import links, netns


@dataclass
class NodeView:
    name: str
    devices: list[str] = field(default_factory=list)  # "name (kind) addr"
    routes: list[str] = field(default_factory=list)
    pods: list[str] = field(default_factory=list)


def read(lab: Lab) -> list[NodeView]:
    views = []
    for node in lab.topo.nodes:
        view = NodeView(node.name)
        ipr = netns.iproute_in(ns_path(node.netns(lab.topo.name)))
        try:
            for msg in ipr.get_links():
                name = str(msg.get_attr("IFLA_IFNAME"))
                kind = links.kind_of(msg) or "device"
                if name == "lo" or (kind == "veth" and name != "eth0"):
                    continue
                addrs = [str(a) for a in links.addresses(ipr, msg["index"])
                         if not a.ip.is_link_local]  # both families, as the pods have
                view.devices.append(f"{name} ({kind}) {' '.join(addrs)}".strip())
            veths = sum(1 for m in ipr.get_links() if links.kind_of(m) == "veth") - 1
            view.devices.append(f"{max(veths, 0)} pod veths on kube-bridge")
            names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
            for family in (socket.AF_INET, socket.AF_INET6):  # both, as the pods have
                for r in ipr.get_routes(family=family, table=254):
                    dst = str(r.get_attr("RTA_DST") or "default")
                    if dst.startswith(("fe80:", "ff")):
                        continue  # every link's own, not the pod network's
                    dst += f"/{r['dst_len']}" if r.get_attr("RTA_DST") else ""
                    via = r.get_attr("RTA_VIA")  # an IPv4 route via an IPv6 next hop
                    gw = r.get_attr("RTA_GATEWAY") or (
                        f"inet6 {via['addr']}" if via else None)
                    dev = names.get(r.get_attr("RTA_OIF"), "?")
                    view.routes.append(f"{dst}{' via ' + gw if gw else ''} dev {dev}")
        finally:
            ipr.close()
        view.pods = [f"{p.name} {' '.join(p.ips or [p.ip])}" for p in lab.topo.pods
                     if p.node == node.name]
        views.append(view)
    return views


def draw(lab: Lab, output: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: searchable, copyable
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    views = read(lab)
    width = 5.2
    height = 2.4 + 0.22 * max((len(v.routes) + len(v.devices) for v in views), default=0)
    fig, ax = plt.subplots(figsize=(max(8, width * len(views) + 1), height + 2.5))
    ax.set_xlim(0, width * len(views) + 0.5)
    ax.set_ylim(-1.8, height + 0.6)
    ax.axis("off")
    t = lab.topo
    ax.set_title(f"podnet lab {t.name}: backend {t.backend}, underlay {t.underlay}")
    for i, v in enumerate(views):
        x = 0.3 + i * width
        ax.add_patch(FancyBboxPatch((x, 0), width - 0.4, height, boxstyle="round,pad=0.05",
                                    fc="#eef4fb", ec="#2a5d9f"))
        node = t.node(v.name)
        ax.text(x + 0.1, height - 0.3, f"{v.name}  {t.node_ip(node)}", weight="bold")
        for j, pod in enumerate(v.pods):
            px = x + 0.1 + j * 1.6
            ax.add_patch(FancyBboxPatch((px, height - 1.2), 1.45, 0.55,
                                        boxstyle="round,pad=0.02", fc="#d8f0d8", ec="#2e7d32"))
            ax.text(px + 0.05, height - 0.95, pod.replace(" ", "\n"), fontsize=6.5,
                    va="center")
            ax.plot([px + 0.7, px + 0.7], [height - 1.2, height - 1.55], color="#2e7d32")
        ax.plot([x + 0.1, x + width - 0.6], [height - 1.55, height - 1.55], color="#2e7d32",
                lw=3)
        lines = ["devices:", *v.devices, "routes:", *v.routes]
        for k, line in enumerate(lines):
            ax.text(x + 0.1, height - 1.85 - 0.22 * k, line, fontsize=6.5,
                    family="monospace", weight="bold" if line.endswith(":") else "normal")
        ax.plot([x + (width - 0.4) / 2] * 2, [0, -1.0], color="#555555", lw=2)
    label = "underlay switch" if t.underlay == "switch" else "underlay router"
    ax.plot([0.3, width * len(views) - 0.1], [-1.0, -1.0], color="#555555", lw=4)
    ax.text(0.3, -1.4, f"{label}; etcd {t.etcd_url}", fontsize=8)
    fig.savefig(output, bbox_inches="tight", dpi=130)
    plt.close(fig)
    return output

