"""The CNI contract without a network: env validation, config decoding, version conversion."""

from __future__ import annotations

import json

import pytest

from podnet.cni import protocol
from podnet.cni import version as cniver
from podnet.cni.errors import CNIError
from podnet.cni.shim import decode_request, encode_request, top_level_string

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


@pytest.mark.parametrize("change,code", [
    ({"CNI_COMMAND": "FOO"}, 4), ({"CNI_CONTAINERID": ""}, 4), ({"CNI_CONTAINERID": "a/b"}, 4),
    ({"CNI_IFNAME": "x" * 16}, 4), ({"CNI_IFNAME": "a:b"}, 4), ({"CNI_NETNS": ""}, 4),
    ({"CNI_NETNS": "relative"}, 4), ({"CNI_PATH": ""}, 4), ({"CNI_ARGS": "novalue"}, 4),
])
def test_bad_env_is_code_4(change: dict[str, str], code: int) -> None:
    rc, out = protocol.run({}, {**ENV, **change}, b'{"cniVersion":"1.0.0","name":"n","type":"t"}')
    assert rc == 1 and json.loads(out)["code"] == code


@pytest.mark.parametrize("stdin,code", [
    (b"{not json", 6), (b"[1]", 6), (b'{"name":"n","type":"t"}', 7),
    (b'{"cniVersion":"0.2.0","name":"n","type":"t"}', 1),
    (b'{"cniVersion":"1.0.0","name":"bad name","type":"t"}', 7),
    (b'{"cniVersion":"1.0.0","name":"n"}', 7),
])
def test_bad_config(stdin: bytes, code: int) -> None:
    rc, out = protocol.run({}, ENV, stdin)
    assert rc == 1 and json.loads(out)["code"] == code


def test_handler_crash_is_an_error_object_not_a_traceback() -> None:
    def boom(_req: protocol.Request) -> None:
        raise KeyError("x")

    rc, out = protocol.run({"ADD": boom}, ENV, b'{"cniVersion":"0.4.0","name":"n","type":"t"}')
    err = json.loads(out)
    assert rc == 1 and err["code"] == 999 and err["cniVersion"] == "0.4.0"
    assert "Traceback" not in out


def test_version_command() -> None:
    rc, out = protocol.run({}, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.1.0"}')
    assert rc == 0 and json.loads(out)["supportedVersions"][-1] == "1.1.0"


def test_result_conversion_round_trip() -> None:
    internal = {"interfaces": [{"name": "eth0", "mtu": 1400}],
                "ips": [{"address": "10.0.0.2/24", "interface": 0},
                        {"address": "fd00::2/64", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "priority": 5}]}
    old = cniver.convert(internal, "0.3.1")
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"]
    assert "mtu" not in old["interfaces"][0] and "priority" not in old["routes"][0]
    back = cniver.to_internal(old)
    assert "version" not in back["ips"][0]
    assert cniver.convert(internal, "1.1.0")["interfaces"][0]["mtu"] == 1400


def test_to_internal_rejects_garbage() -> None:
    with pytest.raises(CNIError):
        cniver.to_internal({"ips": [{"address": "nope"}]})
    with pytest.raises(CNIError):
        cniver.to_internal({"ips": "x"})


@pytest.mark.parametrize("text,want", [
    (b'{"socket": "/run/a.sock", "x": 1}', "/run/a.sock"),
    (b'{"ipam": {"socket": "/inner"}, "socket" : "/outer"}', "/outer"),
    (b'{"ipam": {"socket": "/inner"}}', None),
    (b'{"name": "socket", "x": "y"}', None),
    (b'{"socket": 5}', None),
    (b'{"socket": "a\\"b"}', None),
    (b'{"k": "va\\"l", "socket": "/s"}', "/s"),
    (b"not json at all", None),
])
def test_top_level_string(text: bytes, want: str | None) -> None:
    assert top_level_string(text, b"socket") == want


def test_wire_format_round_trip() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=1;B=", "CNI_EMPTY": ""}
    assert decode_request(encode_request(env, b'{"a": "\\u0000"}')) == (env, b'{"a": "\\u0000"}')


def test_shim_version_reply_matches_the_protocol() -> None:
    from podnet.cni.shim import VERSION_REPLY

    assert json.loads(VERSION_REPLY) == cniver.version_info()
