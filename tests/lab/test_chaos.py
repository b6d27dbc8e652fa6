"""The bounded chaos run's short variant (bench/chaos.py --minutes 2): a 4-node lab with pods
churning and every pod pair probed each second while every kind of fault is injected; nothing
leaks, verify passes, probes fail only while a link is down, every fault recovers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHAOS = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"


def test_two_minutes_of_chaos_lose_and_leak_nothing(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    proc = subprocess.run([sys.executable, str(CHAOS), "--minutes", "2", "--seed", "17",
                           "--json", str(out)], capture_output=True, text=True, timeout=600,
                          check=False)
    report = json.loads(out.read_text()) if out.exists() else {}
    # A string, not a tuple: pytest prints it whole, the report's BROKEN lines included.
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-2000:]}"
    assert report["broken"] == []
    assert all(row["count"] >= 1 and row["recovered"] == row["count"]
               for row in report["by_kind"].values()), report["by_kind"]
    assert report["probes"]["failed_outside_link_down"] == 0 and report["probes"]["sent"] > 2000
    assert not any(report["leaks"].values()) and report["verify_ok"]
