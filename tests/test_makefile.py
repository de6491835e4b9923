"""`make setup` (behind the README's `make demo` / `make test`) on a machine without the dev
machine's local torch wheel: what it would install, and a too-old Python refused up front.

Nothing is installed: `make -n` prints the commands, and the refused Python stops the recipe
before a venv is made."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def torch_install_line(*args: str, tmp_path: Path) -> str:
    printed = make("-n", "setup", f"VENV={tmp_path / 'venv'}", *args).stdout
    lines = [line for line in printed.splitlines() if "pip install" in line and "torch==" in line]
    # torch itself (--no-deps, from the chosen index), then its dependencies from pip's own index
    assert len(lines) == 2 and "--no-deps" in lines[0] and "--index-url" not in lines[1], printed
    return lines[0]


def test_setup_installs_the_cpu_build_of_torch_from_pytorchs_cpu_index(tmp_path):
    # PyPI's Linux wheel of torch is the CUDA build (cuda-toolkit, nvidia-* packages: gigabytes); a
    # pinned `torch==X` from PyPI is not a CPU build, whatever the pin says.
    line = torch_install_line(tmp_path=tmp_path)
    assert "--index-url https://download.pytorch.org/whl/cpu" in line
    # and a user who wants another build can say so
    assert "--index-url" not in torch_install_line("TORCH_INDEX=", tmp_path=tmp_path)


def test_a_python_older_than_3_10_is_refused_before_anything_is_installed(tmp_path):
    fake = tmp_path / "python3.9"
    fake.write_text('#!/bin/sh\n'
                    'if [ "$1" = --version ]; then echo "Python 3.9.18"; exit 0; fi\n'
                    'if [ "$1" = -c ]; then exit 1; fi  # sys.version_info < (3, 10)\n'
                    'echo "fake python ran: $*" >&2; exit 3\n')
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    done = make("demo", f"PYTHON={fake}", f"VENV={venv}")
    assert done.returncode != 0
    assert "vimpac needs Python >= 3.10" in done.stderr and "Python 3.9.18" in done.stderr, done.stderr
    assert "make demo PYTHON=python3.12" in done.stderr
    assert "fake python ran" not in done.stderr  # no venv, no pip
    assert not venv.exists()


def test_setup_is_done_once(tmp_path):
    # A second `make demo` must not reinstall: the stamp file is newer than pyproject.toml.
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").touch()
    printed = make("-n", "setup", f"VENV={venv}").stdout
    assert "pip install" not in printed, printed
