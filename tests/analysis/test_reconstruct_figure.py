"""`vimpac analyze reconstruct` end to end with a tiny random model and a tiny random VQ-VAE."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from PIL import Image

from vimpac.analysis.errors import AnalysisError
from vimpac.analysis.images import compose_grid
from vimpac.analysis.reconstruct import load_video_clip, reconstruct_clip
from vimpac.cli import main
from vimpac.model.vimpac import VimpacForPretraining
from vimpac.video.writer import write_video

sys.path.insert(0, str(Path(__file__).parent))
from analysis_helpers import save_tiny_pretraining_model, tiny_vqvae  # noqa: E402

CODES = 16


def moving_bars(frames: int = 8, height: int = 48, width: int = 64) -> np.ndarray:
    x = np.arange(width)[None, :, None]
    video = np.zeros((frames, height, width, 3), np.uint8)
    for t in range(frames):
        video[t] = np.where(((x + 4 * t) // 8) % 2 == 0, 230, 30).astype(np.uint8)
        video[t, :, :, 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    return video


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reconstruct")
    save_tiny_pretraining_model(root / "run" / "model", CODES)
    tiny_vqvae(CODES).save_pretrained(root / "tokenizer")
    video = write_video(root / "bars.mp4", moving_bars(), fps=4)
    return root, video


def test_cli_writes_png_grid_and_gif(setup, capsys):
    root, video = setup
    out = root / "out"
    # A run folder is accepted: its exported model/ is used.
    code = main(["analyze", "reconstruct", str(root / "run"), str(video), "--tokenizer", str(root / "tokenizer"),
                 "--fps", "2", "--strategy", "iid", "--ratio", "0.5", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "tokens masked" in capsys.readouterr().out
    image = (imread(out / "reconstruction.png")[..., :3] * 255).round().astype(np.uint8)
    _, layout = compose_grid([np.zeros((4, 32, 32, 3), np.uint8)] * 4)  # 4 rows x T=4 frames of 32 px
    margin = image.shape[1] - layout.shape[1]
    assert image.shape[0] == layout.shape[0] and margin > 0

    def row(r):
        boxes = [layout.cell_box(r, c) for c in range(4)]
        return np.stack([image[y0:y1, margin + x0:margin + x1] for y0, x0, y1, x1 in boxes]).astype(int)

    original = row(0)
    expected = load_video_clip(video, fps=2, frames=4, size=32).astype(int)
    assert np.array_equal(original, expected)  # row 1 is the video itself
    assert original.std() > 30
    changed = (row(2) != row(1)).any(-1).reshape(4, 4, 8, 4, 8)
    assert changed.any()
    # Highlighting works on whole token cells: a cell is either tinted throughout or untouched.
    assert np.array_equal(changed.all(axis=(2, 4)), changed.any(axis=(2, 4)))

    with Image.open(out / "reconstruction.gif") as gif:
        assert gif.n_frames == 4
        assert gif.size[1] == 32 + 2 * 4 and gif.size[0] == 4 * 32 + 5 * 4  # four images side by side


def test_prediction_keeps_visible_tokens_and_predicts_real_codes(setup):
    root, video = setup
    model = VimpacForPretraining.from_pretrained(root / "run" / "model").eval()
    from vimpac.tokenizer.base import load_tokenizer

    tokenizer = load_tokenizer(root / "tokenizer")
    frames = load_video_clip(video, fps=2, frames=4, size=32)
    rec = reconstruct_clip(model, tokenizer, frames, "block", 0.3, torch.Generator().manual_seed(1))
    assert rec.mask.any() and rec.mask.shape == (4, 4, 4)
    assert torch.equal(rec.predicted_tokens[~rec.mask], rec.tokens[~rec.mask])
    assert int(rec.predicted_tokens.max()) < CODES
    # The masked positions carry the model's argmax over real codes for the [MASK]-ed input.
    inputs = rec.tokens.masked_fill(rec.mask, model.config.vocab.mask_id)[None]
    with torch.no_grad():
        logits = model(inputs, rec.mask[None]).mlm_logits
    assert torch.equal(rec.predicted_tokens[rec.mask], logits[:, :CODES].argmax(-1))
    assert np.array_equal(rec.roundtrip, tokenizer.decode(rec.tokens).numpy())
    assert 0.0 <= rec.accuracy <= 1.0


def test_mismatches_are_typed_errors(setup, tmp_path, capsys):
    root, video = setup
    model = VimpacForPretraining.from_pretrained(root / "run" / "model")
    with pytest.raises(AnalysisError, match="16 codes but the tokenizer has 32"):
        reconstruct_clip(model, tiny_vqvae(32), np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(AnalysisError, match="positional tables"):
        from vimpac.tokenizer.base import load_tokenizer

        reconstruct_clip(model, load_tokenizer(root / "tokenizer"), np.zeros((6, 32, 32, 3), np.uint8))
    assert main(["analyze", "reconstruct", str(tmp_path), str(video), "--tokenizer", str(root / "tokenizer")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert main(["analyze", "reconstruct", str(root / "run"), str(tmp_path / "missing.mp4"),
                 "--tokenizer", str(root / "tokenizer")]) == 2
    assert "missing.mp4" in capsys.readouterr().err
