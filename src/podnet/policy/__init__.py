"""Kubernetes NetworkPolicy: the model and its evaluator, Kubernetes objects into it, the
datastore's keys, the compiler to each node's nftables rules and the agent's enforcer."""
