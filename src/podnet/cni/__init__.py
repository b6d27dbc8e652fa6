"""The CNI protocol (spec 1.1.0): errors, versions and results, the plugin process contract.

`errors`, `version`, `protocol` and `shim` are stdlib-only: the exec'd plugin imports them on its
start-up path. `server` is the long-lived side that holds warm netlink sockets.
"""
