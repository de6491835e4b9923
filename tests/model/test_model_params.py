"""Parameter counts against the paper's Tables 3 and 13 and the original's measured counts.

The models are built on the meta device (no memory), so the counted thing is the real module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from process_helpers import imported_in_fresh_process
from vimpac.model.config import build_model_config
from vimpac.model.info import parameter_counts

# (preset, layout, paper's count in millions, the original code's exact count if known)
PAPER_COUNTS = [
    ("small", "T,H|W", 29.4, 29_442_048),
    ("base", "T,H|W", 119.7, None),
    ("large-half", "T,H|W", 210.1, 210_106_368),
    ("small", "T,H,W", 35.8, None),
    ("small", "TxHxW", 23.1, None),
]


@pytest.mark.parametrize(("preset", "layout", "millions", "exact"), PAPER_COUNTS)
def test_backbone_counts_match_the_paper(preset, layout, millions, exact):
    counts = parameter_counts(build_model_config(preset, overrides=[f"layout={layout}"]))
    assert abs(counts["backbone"] / 1e6 - millions) / millions < 0.005
    if exact is not None:
        assert counts["backbone"] == exact


def test_head_counts_and_tied_decoder():
    counts = parameter_counts(build_model_config("small"))
    dim, rows = 512, 8197
    assert counts["embedding"] == rows * dim
    assert counts["mlm_head"] == rows + dim * dim + dim + 2 * dim           # bias + Linear + LayerNorm
    assert counts["cls_head"] == (dim * 2048 + 2048) + 2 * 2048 + 2048 * 256  # linear_0, bn_0, linear_1
    assert counts["total"] == counts["backbone"] + counts["mlm_head"] + counts["cls_head"]


def test_model_info_cli_json():
    result = subprocess.run([sys.executable, "-m", "vimpac", "model-info", "--preset", "small", "--layout", "T,H,W",
                             "--json"], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    assert report["config"]["layout"] == "T,H,W"
    assert report["parameters"]["backbone"] == parameter_counts(build_model_config("small", overrides=["layout=T,H,W"]))["backbone"]
    bad = subprocess.run([sys.executable, "-m", "vimpac", "model-info", "--preset", "huge"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown preset 'huge'" in bad.stderr


def test_counting_parameters_imports_no_compiler():
    # The model is built on the meta device, where torch's normal_ init is a Python reference that
    # imports torch._dynamo: seconds added to `vimpac model-info`, which never compiles.
    code = "from vimpac.model.info import parameter_report\nparameter_report('small')"
    assert not imported_in_fresh_process(code, "torch._dynamo")
