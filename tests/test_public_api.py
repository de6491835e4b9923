"""The public names of every vimpac package resolve, also lazily, and show in dir() (notebooks
complete names from it)."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import vimpac

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["vimpac", *sorted(m.name for m in pkgutil.walk_packages(vimpac.__path__, "vimpac.") if m.ispkg)]

# Run in a fresh interpreter: in this one, other tests have imported the submodules, which would
# hide a lazy name that points at the wrong module.
CHECK = """
import importlib, json, sys
problems, light = [], {}
for package in json.loads(sys.argv[1]):
    module = importlib.import_module(package)
    light[package] = "torch" not in sys.modules
    names = list(getattr(module, "__all__", ()))
    for name in names:
        try:
            getattr(module, name)
        except AttributeError as exc:
            problems.append(f"{package}.{name}: {exc}")
        if name not in dir(module):
            problems.append(f"{package}.{name}: in __all__ but not in dir()")
    if names:
        exec(f"from {package} import *", {})
print(json.dumps({"problems": problems, "light": light}))
"""


def test_packages_are_found():
    assert {"vimpac.model", "vimpac.store", "vimpac.finetune", "vimpac.tokenizer"} <= set(PACKAGES)


def test_every_all_name_resolves_in_a_fresh_interpreter():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for package in PACKAGES:
        result = subprocess.run([sys.executable, "-c", CHECK, json.dumps([package])], capture_output=True,
                                text=True, env=env, cwd=REPO)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["problems"] == [], package
        # `vimpac --help` imports the packages' commands modules: importing a package must not pull in torch.
        assert report["light"][package], f"import {package} imports torch"
