"""JSON files that may come from someone else (model, tokenizer and store folders, checkpoints,
annotation files, run records beside a model, metrics.jsonl): however malformed, reading one is
the area's one-line error naming the file, never a RecursionError / ValueError traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from vimpac.analysis.curves import load_series
from vimpac.analysis.errors import AnalysisError
from vimpac.analysis.reconstruct import recorded_tokenizer_id
from vimpac.data.annotations import AnnotationError, load_annotations
from vimpac.engine.checkpoint import CheckpointError as RunCheckpointError, read_checkpoint_state
from vimpac.finetune.errors import FinetuneError
from vimpac.finetune.loading import run_evaluation_settings
from vimpac.io import parse_json
from vimpac.model.errors import CheckpointError
from vimpac.model.pretrained import read_model_config
from vimpac.store import StoreError, TokenStore
from vimpac.store.format import read_manifest_file
from vimpac.tokenizer.base import TokenizerError, load_tokenizer
from vimpac.tokenizer.dalle import DalleTokenizer
from vimpac.tokenizer.vqvae import VQVAETokenizer

# Far deeper than Python's recursion limit: json raises RecursionError, not JSONDecodeError.
DEEP = b"[" * 100_000 + b"]" * 100_000
CRAFTED = {
    "nested_too_deeply": DEEP,
    "not_utf8": b'{"format": "\xff\xfe"}',
    "number_of_5000_digits": b"1" * 5000,
}

# (file name inside tmp_path, how to read it, the error family)
LOADERS = {
    "model config.json": ("model/config.json", lambda p: read_model_config(p.parent), CheckpointError),
    "checkpoint state.json": ("ckpt/state.json", lambda p: read_checkpoint_state(p.parent), RunCheckpointError),
    "store.json": ("store/store.json", lambda p: TokenStore.open(p.parent), StoreError),
    "store manifest": ("store/manifest.json", read_manifest_file, StoreError),
    "tokenizer.json": ("tok/tokenizer.json", lambda p: load_tokenizer(p.parent), TokenizerError),
    "vqvae tokenizer.json": ("tok/tokenizer.json", lambda p: VQVAETokenizer.from_pretrained(p.parent), TokenizerError),
    "dalle tokenizer.json": ("tok/tokenizer.json", lambda p: DalleTokenizer.from_pretrained(p.parent), TokenizerError),
    "diving48 json": ("Diving48_V2_train.json", lambda p: load_annotations("diving48", p), AnnotationError),
    "pretrain.json beside a model": ("run/pretrain.json", lambda p: recorded_tokenizer_id(p.parent / "model"),
                                     AnalysisError),
    "finetune.json beside a model": ("run/finetune.json", lambda p: run_evaluation_settings(p.parent / "model"),
                                     FinetuneError),
    "metrics.jsonl": ("run/metrics.jsonl", lambda p: load_series(p.parent), AnalysisError),
}


@pytest.mark.parametrize("content", CRAFTED.values(), ids=CRAFTED.keys())
@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_malformed_json_is_the_areas_error_naming_the_file(tmp_path, loader, content):
    name, read, error = loader
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "model").mkdir(exist_ok=True)
    # metrics.jsonl skips a cut-short last line; a complete line must be an error.
    path.write_bytes(content + (b"\n" if path.suffix == ".jsonl" else b""))
    with pytest.raises(error) as info:
        read(path)
    assert str(Path(path)) in str(info.value) or str(path.parent) in str(info.value)


def test_parse_json_turns_every_failure_into_a_value_error():
    for content in CRAFTED.values():
        with pytest.raises(ValueError):
            parse_json(content)
    assert parse_json('{"a": [1, 2.5]}') == {"a": [1, 2.5]}
