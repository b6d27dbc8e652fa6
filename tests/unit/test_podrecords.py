"""Pod records on disk and the verify channel's keys (pure logic)."""

from __future__ import annotations

import os

import pytest

from podnet import podrecords
from podnet.podrecords import PodRecord
from podnet.verify import channel


def test_record_from_request_and_back(tmp_path: object) -> None:
    rec = PodRecord.of_request("abc", "eth0", {}, ["10.1.0.2/24", "fd00::2/64"], "/run/netns/x")
    assert rec.name == "abc" and rec.namespace == "" and rec.display == "abc"
    assert rec.ips == ["10.1.0.2", "fd00::2"]
    d = os.path.join(str(tmp_path), "pods")
    podrecords.write(d, "veth1", rec)
    with open(os.path.join(d, "junk.json"), "w") as fh:
        fh.write('{"name": 1}')
    with open(os.path.join(d, "veth2.json.tmp.1"), "w") as fh:
        fh.write("{")
    assert podrecords.read_all(d) == {"veth1": rec}
    podrecords.remove(d, "veth1")
    podrecords.remove(d, "veth1")  # idempotent, as DEL is
    assert podrecords.read_all(d) == {}
    assert podrecords.read_all(os.path.join(d, "none")) == {}


@pytest.mark.parametrize("obj", [[], {"name": "x"}, {
    "container_id": "a", "ifname": "eth0", "namespace": "", "name": "a", "netns": "/x",
    "addresses": "10.0.0.1/24"}])
def test_invalid_records_are_refused(obj: object) -> None:
    with pytest.raises(ValueError):
        PodRecord.from_obj(obj)


def test_channel_keys() -> None:
    assert channel.split_request(channel.request_key("r1")) == ("r1", False)
    assert channel.split_request(channel.go_key("r1")) == ("r1", True)
    assert channel.split_request("/podnet/verify/") is None
    assert channel.split_request("/podnet/verify/r1/result") is None
    assert channel.split_request("/podnet/subnets/x") is None
    kvs = {channel.answer_key("node-a", "r1", channel.READY): "a",
           channel.answer_key("node-b", "r1", channel.READY): "b",
           channel.answer_key("node-a", "r1", channel.RESULT): "c",
           channel.answer_key("node-a", "r2", channel.READY): "d"}
    assert channel.answers(kvs, "r1", channel.READY) == {"node-a": "a", "node-b": "b"}
    with pytest.raises(ValueError):
        channel.endpoint_from({"name": "a", "kind": "router", "ip": "1.2.3.4", "node": "a"})
