"""Traffic-control messages for the fast path, in raw rtnetlink as fastlink's are (a pod's ADD
pays for them): the clsact qdisc, a direct-action BPF filter at a link's ingress per family the
program carries (a filter matches one EtherType: ARP and the rest never wake the program), and
which program those filters run (TCA_BPF_ID, which pyroute2 0.9 does not decode)."""

from __future__ import annotations

import errno
import socket
import struct

from podnet.netlink import codec
from podnet.netlink.codec import NetlinkError
from podnet.netlink.fastlink import Rtnl

RTM_NEWQDISC, RTM_DELQDISC = 36, 37
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46
TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS, TCA_BPF_ID = 6, 7, 8, 11
TCA_BPF_FLAG_ACT_DIRECT = 1
TC_H_CLSACT = 0xFFFFFFF1
TC_H_INGRESS = 0xFFFFFFF2  # clsact's ingress hook
CLSACT_HANDLE = 0xFFFF0000
HANDLE = 1
# Per family: the filter's priority and EtherType (a filter's protocol cannot change, so each
# family has a filter of its own).
FILTERS = {4: (1, 0x0800), 6: (2, 0x86DD)}
FILTER_NAME = "podnet_fast"


def _str(text: str) -> bytes:
    return text.encode() + b"\0"


def _filter_info(family: int = 4) -> int:
    # priority in the high half; the protocol in network order in the low
    prio, protocol = FILTERS[family]
    return (prio << 16) | socket.htons(protocol)


def qdisc_message(ifindex: int) -> bytes:
    return TCMSG.pack(socket.AF_UNSPEC, ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0) + codec.attr(
        TCA_KIND, _str("clsact"))


def filter_message(ifindex: int, prog_fd: int, family: int = 4) -> bytes:
    options = (codec.attr(TCA_BPF_FD, struct.pack("=I", prog_fd))
               + codec.attr(TCA_BPF_NAME, _str(FILTER_NAME))
               + codec.attr(TCA_BPF_FLAGS, struct.pack("=I", TCA_BPF_FLAG_ACT_DIRECT)))
    return (TCMSG.pack(socket.AF_UNSPEC, ifindex, HANDLE, TC_H_INGRESS, _filter_info(family))
            + codec.attr(TCA_KIND, _str("bpf")) + codec.nest(TCA_OPTIONS, options))


def attach_ingress(rtnl: Rtnl, ifindex: int, prog_fd: int, ipv6: bool = False) -> None:
    """Run the program at the link's ingress for IPv4 (and IPv6) packets, replacing the one
    podnet put there before; without `ipv6`, no IPv6 filter stays behind."""
    try:
        rtnl.request(RTM_NEWQDISC, codec.F_CREATE | codec.F_EXCL, qdisc_message(ifindex))
    except NetlinkError as exc:
        if exc.errno != errno.EEXIST:
            raise
    rtnl.request(RTM_NEWTFILTER, codec.F_CREATE | codec.F_REPLACE,
                 filter_message(ifindex, prog_fd))
    if ipv6:
        rtnl.request(RTM_NEWTFILTER, codec.F_CREATE | codec.F_REPLACE,
                     filter_message(ifindex, prog_fd, 6))
    else:
        _delete_filter(rtnl, ifindex, 6)


def detach_ingress(rtnl: Rtnl, ifindex: int) -> bool:
    """Remove podnet's filters (others' stay, and so does the qdisc); False if there were
    none."""
    return sum(_delete_filter(rtnl, ifindex, family) for family in FILTERS) > 0


def _delete_filter(rtnl: Rtnl, ifindex: int, family: int) -> bool:
    body = TCMSG.pack(socket.AF_UNSPEC, ifindex, HANDLE, TC_H_INGRESS, _filter_info(family))
    try:
        rtnl.request(RTM_DELTFILTER, 0, body + codec.attr(TCA_KIND, _str("bpf")))
    except NetlinkError as exc:
        if exc.errno in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            return False
        raise
    return True


def ingress_program(rtnl: Rtnl, ifindex: int) -> int | None:
    """The id of the program podnet's filter runs at the link's ingress, or None."""
    rtnl.send(RTM_GETTFILTER, codec.F_REQUEST | codec.F_ROOT | codec.F_MATCH,
               TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, TC_H_INGRESS, 0))
    found = None
    try:
        for mtype, buf, start, end in codec.dump(rtnl.sock):
            if mtype != RTM_NEWTFILTER:
                continue
            attrs = codec.attrs(buf, start + TCMSG.size, end)
            if attrs.get(TCA_KIND) != _str("bpf") or TCA_OPTIONS not in attrs:
                continue
            opts = codec.attrs(attrs[TCA_OPTIONS], 0, len(attrs[TCA_OPTIONS]))
            if opts.get(TCA_BPF_NAME, b"").rstrip(b"\0") == FILTER_NAME.encode() and \
                    TCA_BPF_ID in opts:
                found = struct.unpack("=I", opts[TCA_BPF_ID][:4])[0]
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT, errno.ENODEV):  # no clsact, no link
            return None
        raise
    return found
