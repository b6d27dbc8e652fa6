"""podnet: a Kubernetes pod network (CNI plugins, node agent, lab, verifier)."""

__version__ = "0.1.0"
