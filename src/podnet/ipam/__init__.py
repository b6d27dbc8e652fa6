"""IPAM compatible with the reference host-local plugin (config and on-disk layout).

Stdlib only: `podnet-ipam` is exec'd per pod and must start as fast as the interpreter does.
"""
