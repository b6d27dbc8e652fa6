"""What the backends and the eBPF fast path both know of VXLAN on the wire (RFC 7348), so that
neither takes it from the other."""

from __future__ import annotations

# In front of the inner IP packet: outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14.
VXLAN_OVERHEAD = 50
VXLAN6_OVERHEAD = 70  # over an IPv6 underlay: the outer IPv6 header is 20 bytes longer
VXLAN_FLAG_VNI = 0x08  # the I flag, the header's first byte; the other 3 bytes reserved
VXLAN_PORT = 8472  # the Linux default, flannel's; IANA's is 4789
# The outer UDP source ports a flow's hash is spread over ([low, high), as the kernel takes a
# VXLAN device's range): IANA's dynamic ports, set on the devices podnet makes.
VXLAN_SOURCE_PORTS = (49152, 65535)
