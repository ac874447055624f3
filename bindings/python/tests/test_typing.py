"""The type stubs match the installed module and type-check real usage (mypy)."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("mypy")
HERE = Path(__file__).parent / "typing"


def mypy(*args):
    with tempfile.TemporaryDirectory() as cache:
        return subprocess.run(
            [sys.executable, "-m", *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=HERE,
            env={**os.environ, "MYPY_CACHE_DIR": cache},
        )


def test_stubs_match_the_runtime():
    out = mypy("mypy.stubtest", "--allowlist", str(HERE / "stubtest-allowlist.txt"), "kinesis_butler")
    assert out.returncode == 0, out.stdout + out.stderr


def test_usage_type_checks_strictly():
    out = mypy("mypy", "--strict", str(HERE / "usage.py"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_misuse_is_rejected():
    out = mypy("mypy", "--strict", str(HERE / "wrong.py"))
    flagged = {int(line.split(":")[1]) for line in out.stdout.splitlines() if ": error:" in line}
    marked = {n for n, line in enumerate((HERE / "wrong.py").read_text().splitlines(), 1) if "# E:" in line}
    assert flagged == marked, out.stdout
