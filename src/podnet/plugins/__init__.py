"""CNI plugins built on the data plane (one module a plugin)."""
