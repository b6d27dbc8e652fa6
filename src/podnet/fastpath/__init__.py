"""The eBPF fast path: pod traffic between nodes skips the node's bridge and IP forwarding."""
