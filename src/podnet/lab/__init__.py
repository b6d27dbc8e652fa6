"""`podnet lab`: a whole cluster on one machine, described as a topology and built from it in
network namespaces: an underlay (a switch, or a router), etcd, one agent per node, pods wired by
the installed CNI plugins exactly as a runtime does."""
