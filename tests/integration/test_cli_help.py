"""Every ``cag … --help`` works and ``cag --version`` answers (issue 14: ``cag serve --help`` crashed)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser, main

CAG = str(Path(sys.executable).with_name("cag"))


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser tree, e.g. ("policy", "consent", "grant")."""
    out = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, (*prefix, name))
    return out


COMMANDS = _commands(build_parser())


def test_the_tree_is_walked() -> None:
    assert ("serve",) in COMMANDS and ("policy", "load") in COMMANDS and ("policy", "consent", "grant") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) or "cag" for p in COMMANDS])
def test_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*path, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: "), out[:200]


def test_bench_load_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "load", "--help"])
    assert exc.value.code == 0
    assert "--gateway-rate" in capsys.readouterr().out


def test_version() -> None:
    p = subprocess.run([CAG, "--version"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout.startswith("cag ") and p.stdout.split()[1][0].isdigit()
