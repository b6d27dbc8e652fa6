"""The datastore all nodes share: the network config and one lease per node's pod subnet."""
