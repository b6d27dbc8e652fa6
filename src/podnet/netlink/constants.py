"""The rtnetlink numbers podnet's messages carry (linux/rtnetlink.h, neighbour.h, if_addr.h),
in one place: route tables and protocols, neighbour states and flags, address flags."""

from __future__ import annotations

RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTPROT_STATIC = 4  # routes the plugin gives pods
# Routes podnet's backends install carry this protocol number, so they can be told apart from
# anyone else's and all removed when the backend changes.
RTPROT_PODNET = 88
RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
IFA_F_NODAD = 0x02  # IPv6 addresses: IPAM made them unique, no duplicate detection
