"""The tensor files of a checkpoint from elsewhere: each is checked from its safetensors header
(names, dtypes, shapes) before it is loaded, and the generator states in rng.safetensors - the
CUDA ones included, which only a GPU machine would otherwise use - before any is set. Errors are a
CheckpointError naming the file and the tensor."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import vimpac.engine.checkpoint as checkpoint_module
from process_helpers import fifo_writer_after
from vimpac.engine.checkpoint import (CUDA_RNG_STATE_BYTES, CheckpointError, latest_checkpoint, load_checkpoint,
                                      rng_state_problem, save_checkpoint)

CPU_STATE = torch.get_rng_state()
CUDA_STATE = torch.zeros(CUDA_RNG_STATE_BYTES, dtype=torch.uint8)


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    model, optimizer = _model_and_optimizer()
    save_checkpoint(tmp_path, 1, model, optimizer, None, {})
    return latest_checkpoint(tmp_path)


def _refused_before_anything_is_restored(path: Path, expected: str) -> None:
    torch.manual_seed(1)
    model, optimizer = _model_and_optimizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path, model, optimizer)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng_before)


# ------------------------------------------------------------------------------ generator states


@pytest.mark.parametrize("states", [
    {"cpu": CPU_STATE},
    {"cpu": CPU_STATE, **{f"cuda{i}": CUDA_STATE for i in range(12)}},
], ids=["cpu only", "12 GPUs"])
def test_the_states_a_checkpoint_writes_are_accepted(states):
    assert rng_state_problem(states) is None
    assert rng_state_problem({k: v.to("meta") for k, v in states.items()}) is None  # as read from the header


BAD_STATES = {
    "no cpu": ({"cuda0": CUDA_STATE}, "expected the CPU generator state 'cpu'"),
    "cpu too short": ({"cpu": CPU_STATE[:-1]}, "field 'cpu' must be a generator state of"),
    "cuda as int64": ({"cpu": CPU_STATE, "cuda0": torch.zeros(2, dtype=torch.int64)},
                      rf"field 'cuda0' must be a generator state of {CUDA_RNG_STATE_BYTES} bytes \(uint8\), "
                      r"got torch.int64 of shape \(2,\)"),
    "cuda too long": ({"cpu": CPU_STATE, "cuda0": torch.zeros(816, dtype=torch.uint8)},
                      r"field 'cuda0' must be a generator state .* got torch.uint8 of shape \(816,\)"),
    "cuda 2-d": ({"cpu": CPU_STATE, "cuda0": CUDA_STATE.view(2, 8)}, r"field 'cuda0' .* shape \(2, 8\)"),
    "a GPU missing": ({"cpu": CPU_STATE, "cuda0": CUDA_STATE, "cuda2": CUDA_STATE},
                      r"unexpected tensors \['cuda2'\]; expected 'cpu' and one CUDA generator state per GPU, "
                      "'cuda0' to 'cuda1'"),
    "another name": ({"cpu": CPU_STATE, "gpu0": CUDA_STATE}, r"unexpected tensors \['gpu0'\]"),
}


@pytest.mark.parametrize("states, expected", BAD_STATES.values(), ids=BAD_STATES.keys())
def test_generator_states_unlike_those_written_are_named(states, expected):
    assert re.search(expected, rng_state_problem(states) or "")
    assert re.search(expected, rng_state_problem({k: v.to("meta") for k, v in states.items()}) or "")


@pytest.mark.parametrize("states, expected", BAD_STATES.values(), ids=BAD_STATES.keys())
def test_a_checkpoint_with_such_states_is_refused_before_anything_is_restored(checkpoint, states, expected):
    # Without a GPU the CUDA states used to be ignored, and on one torch.cuda.set_rng_state_all
    # failed on them after the model and optimizer were already restored.
    save_file({k: v.clone() for k, v in states.items()}, str(checkpoint / "rng.safetensors"))
    _refused_before_anything_is_restored(checkpoint, f"{checkpoint / 'rng.safetensors'}: {expected}")


# ------------------------------------------------------------------------------ checked before loading


@pytest.fixture
def no_loading(monkeypatch):
    def loaded(*args, **kwargs):
        raise AssertionError("a tensor file was loaded before its header was checked")
    monkeypatch.setattr(checkpoint_module, "load_file", loaded)
    monkeypatch.setattr(checkpoint_module, "load_model", loaded)


def test_model_tensors_of_other_shapes_or_names_are_refused_from_the_header(checkpoint, no_loading):
    weights = load_file(str(checkpoint / "model.safetensors"))
    save_file({**weights, "weight": torch.zeros(2, 4)}, str(checkpoint / "model.safetensors"))
    _refused_before_anything_is_restored(checkpoint, r"model.safetensors: does not fit the model: "
                                                     r"shape mismatch \[weight: file \(2, 4\) vs model \(2, 3\)\]$")
    save_file({**weights, "extra": torch.zeros(1000)}, str(checkpoint / "model.safetensors"))
    _refused_before_anything_is_restored(checkpoint, r"model.safetensors: does not fit the model: unexpected \[extra\]$")


def test_missing_model_tensors_and_integer_weights_are_refused_from_the_header(checkpoint, no_loading):
    # Both were found only after the whole file was loaded (a missing tensor), or not at all
    # (load_state_dict turned int64 weights into floats silently).
    weights = load_file(str(checkpoint / "model.safetensors"))
    save_file({"weight": weights["weight"]}, str(checkpoint / "model.safetensors"))
    _refused_before_anything_is_restored(checkpoint, r"model.safetensors: does not fit the model: missing \[bias\]$")
    save_file({**weights, "bias": torch.zeros(2, dtype=torch.int64)}, str(checkpoint / "model.safetensors"))
    _refused_before_anything_is_restored(checkpoint, r"model.safetensors: does not fit the model: "
                                                     r"dtype mismatch \[bias: file torch.int64 vs model torch.float32\]")


class TiedModel(torch.nn.Module):
    """An output layer sharing its weight with the embedding (as VIMPAC's masked-token head)."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(5, 3)
        self.output = torch.nn.Linear(3, 5, bias=False)
        self.output.weight = self.embedding.weight


@pytest.mark.parametrize("stored, expected", [
    ({"embedding.weight"}, None),
    ({"output.weight"}, None),  # either name loads the tied tensor
    ({"embedding.weight", "output.weight"}, r"stored twice \[output.weight\]"),
    (set(), r"missing \[embedding.weight, output.weight\]"),
])
def test_a_tied_tensor_is_stored_under_one_of_its_names(tmp_path, stored, expected, monkeypatch):
    # safetensors' save_model stores a tied tensor once; its strict load_model refuses it stored
    # twice, which the header check now does before anything is loaded.
    model = TiedModel()
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, 1, model, optimizer, None, {})
    path = latest_checkpoint(tmp_path)
    weight = model.embedding.weight.detach().clone()
    save_file({name: weight.clone() for name in stored}, str(path / "model.safetensors"))
    fresh = TiedModel()
    if expected is None:
        load_checkpoint(path, fresh, torch.optim.AdamW(fresh.parameters()))
        assert torch.equal(fresh.output.weight, weight) and fresh.output.weight is fresh.embedding.weight
        return
    monkeypatch.setattr(checkpoint_module, "load_model", lambda *args, **kwargs: pytest.fail("loaded"))
    with pytest.raises(CheckpointError, match=f"{path / 'model.safetensors'}: does not fit the model: {expected}"):
        load_checkpoint(path, fresh, torch.optim.AdamW(fresh.parameters()))


def test_optimizer_tensors_the_state_does_not_name_are_refused_from_the_header(checkpoint, no_loading):
    tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    save_file({**tensors, "junk": torch.zeros(1000)}, str(checkpoint / "optimizer.safetensors"))
    _refused_before_anything_is_restored(checkpoint, r"optimizer.safetensors: holds tensors .*state.json does not "
                                                     r"name: \['junk'\]")


def test_a_generator_state_of_another_size_is_refused_from_the_header(checkpoint, no_loading):
    save_file({"cpu": torch.zeros(10**6, dtype=torch.uint8)}, str(checkpoint / "rng.safetensors"))
    _refused_before_anything_is_restored(checkpoint, "rng.safetensors: field 'cpu' must be a generator state")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "rng.safetensors"])
def test_a_tensor_file_that_is_a_fifo_is_refused_without_blocking(checkpoint, name):
    (checkpoint / name).unlink()
    os.mkfifo(checkpoint / name)
    with fifo_writer_after(checkpoint / name):
        _refused_before_anything_is_restored(checkpoint, f"{checkpoint / name}: .*: not a regular file")


def test_an_untouched_checkpoint_loads(checkpoint):
    model, optimizer = _model_and_optimizer()
    state = load_checkpoint(checkpoint, model, optimizer)
    assert state["step"] == 1


# ------------------------------------------------------------------------------ on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_states_are_saved_and_restored(tmp_path):
    torch.cuda.init()  # save_checkpoint writes CUDA states once CUDA is initialised
    torch.cuda.manual_seed_all(3)
    model, optimizer = _model_and_optimizer()
    path = save_checkpoint(tmp_path, 1, model, optimizer, None, {})
    states = load_file(str(path / "rng.safetensors"))
    assert sorted(states) == ["cpu"] + [f"cuda{i}" for i in range(torch.cuda.device_count())]
    assert rng_state_problem(states) is None
    expected = torch.rand(8, device="cuda")
    torch.cuda.manual_seed_all(99)
    load_checkpoint(path, model, optimizer)
    assert torch.equal(torch.rand(8, device="cuda"), expected)
