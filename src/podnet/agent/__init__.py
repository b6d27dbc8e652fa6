"""The node agent: leases the node's pod subnet, learns its peers, programs the backend."""
