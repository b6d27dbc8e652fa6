"""deploy/systemd: the unit verifies with systemd's own checker, and every command it runs is one
podnet accepts with the example environment file (a drift between the unit and the CLI fails
here, not on a node)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from podnet.agent.agent import EXIT_CONFIG_CHANGED
from podnet.cli import agent_options, build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNIT = DEPLOY / "podnet-agent.service"
INSTALLED = "/usr/local/bin/podnet"


def settings(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a unit or an EnvironmentFile (the last of a key wins)."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def expand(command: str, env: dict[str, str]) -> list[str]:
    """systemd's expansion: ${VAR} is one word, $VAR splits at whitespace."""
    words: list[str] = []
    for word in command.split():
        if m := re.fullmatch(r"\$\{(\w+)\}", word):
            words.append(env[m.group(1)])
        elif m := re.fullmatch(r"\$(\w+)", word):
            words += env[m.group(1)].split()
        else:
            words.append(word)
    return words


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="make test installs systemd")
def test_the_unit_verifies(tmp_path: Path) -> None:
    podnet = Path(sys.executable).with_name("podnet")  # where pip put it in this venv
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(podnet)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_the_units_commands_are_accepted_by_podnet() -> None:
    unit = settings(UNIT)
    env = settings(DEPLOY / Path(unit["EnvironmentFile"]).name)  # the example, as installed
    for key in ("ExecStartPre", "ExecStart"):
        argv = expand(unit[key], env)
        assert argv[0] == INSTALLED
        args = build_parser().parse_args(argv[1:])  # SystemExit on an option podnet lacks
        if args.command == "agent":
            agent_options(args)  # UserError on an option the agent would refuse
    # The agent exits with this status when the cluster's config changes: systemd restarts it.
    assert unit["Restart"] == "always"
    assert str(EXIT_CONFIG_CHANGED) not in unit.get("RestartPreventExitStatus", "")
