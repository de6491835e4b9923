"""Features of raw video files, straight through the frame tokenizer and the backbone.

    tokenizer = load_tokenizer("tokenizers/vqvae")
    backbone = load_backbone("runs/pretrain/final", frames=8, grid=(16, 16))
    emb = embed_videos(backbone, tokenizer, ["a.mp4", "b.mp4"], fps=2, size=128)
    emb.cls["a"]          # (D,) float32
    write_embeddings(emb, "features.safetensors")

A video is decoded at `fps`, resized / center-cropped to `size` (the store's "s1.00_center"
view) and tokenized; it is covered with ceil(T_video / T) clips of the model's T frames, spread
from the first to the last frame as multi-view evaluation spreads its clips (`uniform_clip_starts`:
no clip runs past the end of a video of at least T frames, so none is mostly [PAD]; neighbouring
clips overlap when T does not divide T_video; only a video shorter than T gets a padded clip). The
clips go through the backbone `batch_size` at a time (a long video's clips do not all have to
fit in memory at once), and the CLS feature is the mean of the clips' CLS outputs. Token
features (optional) are the clips' token outputs put back at their frames, averaged where clips
overlap: (T_video, h, w, D).
A video that cannot be read is recorded in `failures` with the reason; the others go on.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from vimpac.data.clips import take_clip, uniform_clip_starts
from vimpac.finetune.errors import FinetuneError
from vimpac.finetune.evaluate import clips_per_forward, evaluation_mode, model_device
from vimpac.io import atomic_path, atomic_write_json, output_file_problem
from vimpac.progress import progress_bar, track


@dataclass
class Embeddings:
    cls: dict[str, np.ndarray]  # key -> (D,) float32
    tokens: dict[str, np.ndarray] | None = None  # key -> (T_video, h, w, D) float32
    failures: list[dict] = field(default_factory=list)  # {"key", "path", "error"}
    paths: dict[str, str] = field(default_factory=dict)  # key -> source path


def video_keys(paths: Sequence[str | Path]) -> list[str]:
    """File stems, or the paths as given where two files share a stem."""
    stems = [Path(p).stem for p in paths]
    duplicated = {s for s in stems if stems.count(s) > 1}
    return [str(p) if s in duplicated else s for p, s in zip(paths, stems)]


def video_tokens(path: str | Path, tokenizer, fps: float, size: int) -> np.ndarray:
    """(T, size / 8, size / 8) int64 tokens of the center view of a video sampled at `fps`."""
    from vimpac.video.reader import VideoReader
    from vimpac.video.views import make_views_of_chunks, view_set

    center = view_set("center")[0]
    # In chunks: a whole long video at full resolution would not fit in memory, its views do.
    with VideoReader(path) as video:
        indices = video.frame_indices_at_fps(fps)
        view = make_views_of_chunks(video.iter_frames(indices), len(indices), size, [center])[center.name]
    return np.asarray(tokenizer.encode(view), dtype=np.int64)


@torch.inference_mode()
def embed_tokens(model: nn.Module, tokens: np.ndarray, frames: int | None = None, with_tokens: bool = False,
                 device: str | torch.device | None = None, bf16: bool = False,
                 batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """CLS feature (D,) and optionally token features (T, h, w, D), float32 numpy, of one video's
    tokens (T, h, w), its clips encoded `batch_size` at a time (None: clips_per_forward's default
    for the device) on `device` (default: the model's), in eval mode (the model's own mode back
    afterwards)."""
    backbone = getattr(model, "backbone", model)
    frames = frames or backbone.config.max_frames
    device = model_device(backbone) if device is None else torch.device(device)
    batch_size = clips_per_forward(batch_size, device)
    length = tokens.shape[0]
    if length == 0:
        raise FinetuneError("video has no frames at this fps")
    # As few clips as cover every frame, placed like evaluation's: consecutive clips of T with
    # the last one padded gave an 11-frame video at T = 10 half its feature from 1 real frame.
    starts = [int(s) for s in uniform_clip_starts(length, frames, math.ceil(length / frames))]
    tokens = np.asarray(tokens, dtype=np.int64)
    clips = torch.from_numpy(np.stack([take_clip(tokens, s, frames, backbone.pad_id) for s in starts])).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    cls_outputs = []
    token_sums, token_counts = None, torch.zeros(length)
    with evaluation_mode(backbone):
        for first, batch in zip(range(0, len(starts), batch_size), clips.split(batch_size)):
            with autocast:
                cls, hiddens = backbone(batch)
            cls_outputs.append(cls.float().cpu())
            if with_tokens:
                hiddens = hiddens.float().cpu()  # (clips, T, h, w, D)
                if token_sums is None:
                    token_sums = torch.zeros(length, *hiddens.shape[2:])
                for start, clip_hiddens in zip(starts[first:], hiddens):
                    real = min(frames, length - start)  # a clip's [PAD] frames are no frames of the video
                    token_sums[start:start + real] += clip_hiddens[:real]
                    token_counts[start:start + real] += 1
    cls_feature = torch.cat(cls_outputs).mean(dim=0).numpy()
    token_features = None
    if with_tokens:
        token_features = (token_sums / token_counts.view(-1, 1, 1, 1)).numpy()
    return cls_feature, token_features


def embed_videos(model: nn.Module, tokenizer, paths: Sequence[str | Path], fps: float = 2.0, size: int = 128,
                 frames: int | None = None, with_tokens: bool = False, keys: Sequence[str] | None = None,
                 device: str | torch.device | None = None, bf16: bool = False, progress: bool = False,
                 batch_size: int | None = None) -> Embeddings:
    """Features of every readable video in `paths`; unreadable ones are listed in `failures`.

    `model` is a backbone or any model with a `.backbone`, run in eval mode (its own mode back
    afterwards) on `device` (default: where its weights are); the tokenizer runs on its own device."""
    from vimpac.video.errors import VideoError

    backbone = getattr(model, "backbone", model)
    if tokenizer.codebook_size != backbone.config.codebook_size:
        raise FinetuneError(f"tokenizer has {tokenizer.codebook_size} codes but the model was trained on "
                            f"{backbone.config.codebook_size}; use the tokenizer the model was pre-trained with")
    check_size(size, tokenizer.downsample)
    grid = size // tokenizer.downsample
    if grid > backbone.config.height or grid > backbone.config.width:
        raise FinetuneError(f"size {size}: gives {grid} x {grid} tokens, more than the model's tables "
                            f"({backbone.config.height} x {backbone.config.width}); load the model for this grid "
                            "(load_backbone(..., grid=...) interpolates them)")
    keys = list(keys) if keys is not None else video_keys(paths)
    if len(keys) != len(paths) or len(set(keys)) != len(keys):
        raise FinetuneError("keys: expected one distinct key per video path")
    result = Embeddings(cls={}, tokens={} if with_tokens else None)
    items = list(zip(keys, paths))
    bar = progress_bar(len(items), "embed", "video", enabled=progress)
    for key, path in track(items, bar):
        try:
            tokens = video_tokens(path, tokenizer, fps, size)
            cls, token_features = embed_tokens(backbone, tokens, frames, with_tokens, device, bf16, batch_size)
        except (VideoError, FinetuneError) as exc:
            result.failures.append({"key": key, "path": str(path), "error": str(exc)})
            continue
        result.cls[key] = cls
        result.paths[key] = str(path)
        if with_tokens:
            result.tokens[key] = token_features
    bar.close()
    return result


def check_size(size: int, downsample: int) -> None:
    if size % downsample:
        raise FinetuneError(f"size {size}: must be a multiple of the tokenizer's downsampling factor {downsample}")


def embedding_files(out: str | Path) -> dict[str, Path]:
    """The files `write_embeddings` writes for `out`, by role ("cls", and for `.npy` "keys" and
    "tokens"); refuses, before any work, a suffix it cannot write or a path that cannot be written."""
    out = Path(out)
    if out.suffix not in (".safetensors", ".npy"):
        raise FinetuneError(f"{out}: output must end in .npy or .safetensors")
    problem = output_file_problem(out)
    if problem:
        raise FinetuneError(problem)
    if out.suffix == ".safetensors":
        return {"cls": out}
    stem = out.name[:-len(".npy")]
    return {"cls": out, "keys": out.with_name(stem + ".keys.json"), "tokens": out.with_name(stem + ".tokens.npz")}


def write_embeddings(embeddings: Embeddings, out: str | Path) -> list[Path]:
    """Write by suffix: `.safetensors` (tensors "cls/<key>" and "tokens/<key>", the key list in
    the metadata) or `.npy` (the (N, D) CLS matrix, rows in key order, with `<out>.keys.json`
    beside it and, with token features, `<out stem>.tokens.npz`: one array per video, loadable
    with allow_pickle=False; without them an older `.tokens.npz` of that name is removed, as it
    would describe other videos). Returns the files written."""
    files = embedding_files(out)
    out = files["cls"]
    keys = list(embeddings.cls)
    index = {"keys": keys, "paths": [embeddings.paths.get(k) for k in keys], "failures": embeddings.failures}
    if out.suffix == ".safetensors":
        from safetensors.numpy import save_file

        tensors = {f"cls/{k}": np.ascontiguousarray(v) for k, v in embeddings.cls.items()}
        for k, v in (embeddings.tokens or {}).items():
            tensors[f"tokens/{k}"] = np.ascontiguousarray(v)
        with atomic_path(out, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"vimpac": json.dumps(index)})
        return [out]
    dim = next(iter(embeddings.cls.values())).shape[0] if keys else 0
    matrix = np.stack([embeddings.cls[k] for k in keys]) if keys else np.zeros((0, dim), np.float32)
    with atomic_path(out, suffix=".npy") as tmp:
        np.save(tmp, matrix, allow_pickle=False)
    atomic_write_json(files["keys"], index)
    written = [out, files["keys"]]
    if embeddings.tokens is None:
        files["tokens"].unlink(missing_ok=True)
    else:
        with atomic_path(files["tokens"], suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{f"v{i:06d}": embeddings.tokens[k] for i, k in enumerate(keys)})
        written.append(files["tokens"])
    return written
