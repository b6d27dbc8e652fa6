"""Backends: each programs the node's kernel for its peers behind one interface (base.Backend);
`manager.create` picks one by the cluster config's backend type."""
