"""The RPS mask notation the kernel's bitmap parser reads."""

from podnet.netlink.sysfs import cpu_mask


def test_cpu_masks() -> None:
    assert cpu_mask(1) == "00000001"
    assert cpu_mask(2) == "00000003"
    assert cpu_mask(32) == "ffffffff"
    assert cpu_mask(33) == "00000001,ffffffff"
    assert cpu_mask(72) == "000000ff,ffffffff,ffffffff"
