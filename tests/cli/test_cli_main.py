"""The console script's surface: help, version, and one-line usage errors with exit code 2."""

import subprocess
import sys

import pytest

from medmtl import __version__


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medmtl.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_data_command():
    out = run_cli("--help")
    assert out.returncode == 0
    assert "data" in out.stdout


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0
    assert __version__ in out.stdout


@pytest.mark.parametrize("args", [("no-such-command",), ("data",), ("data", "inspect", "--no-such-flag", "x")])
def test_usage_error_is_one_line_exit_2(args):
    out = run_cli(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "error:" in lines[0]
