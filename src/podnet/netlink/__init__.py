"""The data plane: network namespaces and netlink (pyroute2) helpers."""
