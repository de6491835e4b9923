"""The paper's Figure 5 (App. H.3): what a pre-trained model draws into masked regions.

    model = VimpacForPretraining.from_pretrained("runs/pt/final")
    tokenizer = load_tokenizer("tokenizers/vqvae")
    frames = load_video_clip("video.mp4", fps=1, frames=5, size=128)
    rec = reconstruct_clip(model, tokenizer, frames, generator=torch.Generator().manual_seed(0))
    save_reconstruction(rec, "out/reconstruct")          # reconstruction.png + reconstruction.gif

Rows: 1. the original frames, 2. the tokenizer round trip (what the model could at best see),
3. the round trip with the masked area highlighted, 4. the model's prediction decoded: visible
tokens kept, each masked token replaced by the argmax of the masked-token head over the real
codes (the five special rows are excluded: they have no image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vimpac.analysis.errors import AnalysisError
from vimpac.analysis.images import compose_grid, highlight, save_gif, save_png
from vimpac.io import parse_json
from vimpac.pretrain.masking import apply_mask, auto_num_blocks, block_mask, iid_mask
from vimpac.tokenizer.base import FrameTokenizer

ROW_LABELS = ("original", "tokenizer round trip", "masked", "model prediction")
OUTPUT_FILES = ("reconstruction.png", "reconstruction.gif")


@dataclass(frozen=True)
class Reconstruction:
    original: np.ndarray  # (T, S, S, 3) uint8
    roundtrip: np.ndarray  # decode(encode(original))
    highlighted: np.ndarray  # roundtrip with the masked cells tinted
    predicted: np.ndarray  # decode(tokens with masked positions predicted)
    tokens: torch.Tensor  # (T, h, w) int64 tokens of the original
    mask: torch.Tensor  # (T, h, w) bool
    predicted_tokens: torch.Tensor  # (T, h, w) int64

    @property
    def accuracy(self) -> float:
        """Fraction of masked tokens the model predicted exactly."""
        masked = int(self.mask.sum())
        hits = int(((self.predicted_tokens == self.tokens) & self.mask).sum())
        return hits / masked if masked else float("nan")

    def rows(self) -> list[np.ndarray]:
        return [self.original, self.roundtrip, self.highlighted, self.predicted]


RUN_CONFIG = "pretrain.json"
"""Written by `vimpac pretrain` into the run folder, beside `model/`; records the tokenizer_id."""


def resolve_model_folder(checkpoint: str | Path) -> Path:
    """A pre-training model folder as given, or a run folder's exported `model/`."""
    folder = Path(checkpoint)
    if not (folder / "config.json").exists() and (folder / "model" / "config.json").exists():
        return folder / "model"
    return folder


def recorded_tokenizer_id(model_folder: str | Path) -> tuple[str, Path] | None:
    """(tokenizer_id, the file recording it) from the run's pretrain.json: in the model folder or,
    for the usual RUN/model layout, beside it. None when no run configuration is found."""
    model_folder = Path(model_folder)
    for path in (model_folder / RUN_CONFIG, model_folder.parent / RUN_CONFIG):
        if not path.is_file():
            continue
        try:
            record = parse_json(path.read_text())
        except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8, nested too deeply
            raise AnalysisError(f"{path}: not a readable run configuration ({exc})") from None
        tokenizer_id = record.get("tokenizer_id") if isinstance(record, dict) else None
        if tokenizer_id is None:
            return None
        if not isinstance(tokenizer_id, str):
            raise AnalysisError(f"{path}: tokenizer_id is {tokenizer_id!r}, expected a string")
        return tokenizer_id, path
    return None


def check_tokenizer(model_folder: str | Path, tokenizer: FrameTokenizer) -> None:
    """Refuse a tokenizer other than the one the model was pre-trained on, when the run recorded it.

    Equal codebook sizes are not enough: another tokenizer's code 17 means another picture, and
    the reconstructions would look plausible yet be meaningless.
    """
    recorded = recorded_tokenizer_id(model_folder)
    if recorded is not None and recorded[0] != tokenizer.tokenizer_id:
        tokenizer_id, path = recorded
        raise AnalysisError(f"the model was pre-trained on tokenizer {tokenizer_id} ({path}) but --tokenizer is "
                            f"{tokenizer.tokenizer_id}; pass the tokenizer the model was pre-trained on")


def load_video_clip(path: str | Path, fps: float, frames: int, size: int, start_time: float = 0.0) -> np.ndarray:
    """`frames` frames at `fps` from `start_time`, as the centre S x S view (uint8 (T, S, S, 3))."""
    from vimpac.video.reader import read_clip
    from vimpac.video.views import ViewSpec, make_view

    clip = read_clip(path, fps, frames, start_time)
    return make_view(clip, size, ViewSpec(1.0, "center"))


def reconstruct_clip(model: torch.nn.Module, tokenizer: FrameTokenizer, frames: np.ndarray,
                     strategy: Literal["block", "iid"] = "block", ratio: float = 0.15,
                     generator: torch.Generator | None = None) -> Reconstruction:
    """Tokenize, mask (block masking with the block count closest to `ratio`, or i.i.d.), predict."""
    cfg = model.config
    if cfg.codebook_size != tokenizer.codebook_size:
        raise AnalysisError(f"the model was built for {cfg.codebook_size} codes but the tokenizer has "
                            f"{tokenizer.codebook_size}; use the tokenizer the model was pre-trained on")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise AnalysisError(f"frames: expected uint8 (T, S, S, 3), got {frames.dtype} {frames.shape}")
    tokens = tokenizer.encode(frames).long()
    T, H, W = tokens.shape
    if T > cfg.max_frames or H > cfg.height or W > cfg.width:
        raise AnalysisError(f"{T} frames of {H} x {W} tokens do not fit the model's positional tables "
                            f"({cfg.max_frames} x {cfg.height} x {cfg.width}); pass fewer --frames or a smaller --size")
    if strategy == "block":
        mask = block_mask(1, T, H, W, auto_num_blocks(T, H, W, ratio), generator)
    elif strategy == "iid":
        mask = iid_mask(1, T, H, W, ratio, generator)
    else:
        raise AnalysisError(f"strategy: expected 'block' or 'iid', got {strategy!r}")
    if not mask.any():  # an i.i.d. draw can come out empty on a tiny grid; predict one token at least
        mask[0, T // 2, H // 2, W // 2] = True
    inputs, _ = apply_mask(tokens[None], mask, cfg.vocab, "mask")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(inputs.to(device), mask.to(device)).mlm_logits
    finally:
        model.train(was_training)
    guesses = logits[:, : cfg.codebook_size].argmax(-1).cpu()
    predicted_tokens = tokens.clone()
    predicted_tokens[mask[0]] = guesses
    roundtrip = tokenizer.decode(tokens).numpy()
    return Reconstruction(
        original=frames, roundtrip=roundtrip, highlighted=highlight(roundtrip, mask[0].numpy(), tokenizer.downsample),
        predicted=tokenizer.decode(predicted_tokens).numpy(), tokens=tokens, mask=mask[0],
        predicted_tokens=predicted_tokens,
    )


def save_reconstruction(rec: Reconstruction, out_dir: str | Path, frame_ms: int = 600) -> tuple[Path, Path]:
    """reconstruction.png (the four rows over T frames) and reconstruction.gif (the four side by
    side, one GIF frame per video frame)."""
    out_dir = Path(out_dir)
    labels = list(ROW_LABELS)
    labels[-1] = f"{ROW_LABELS[-1]} ({rec.accuracy:.0%} exact)"
    image, _ = compose_grid(rec.rows(), labels)
    png = save_png(out_dir / OUTPUT_FILES[0], image)
    animation = [compose_grid([np.stack([row[t] for row in rec.rows()])])[0] for t in range(rec.original.shape[0])]
    gif = save_gif(out_dir / OUTPUT_FILES[1], animation, frame_ms)
    return png, gif
