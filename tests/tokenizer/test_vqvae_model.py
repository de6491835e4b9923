"""Our VQ-VAE: shapes, the EMA codebook maths, dead-code restart, the straight-through
gradient, save / load, and a short training run that must actually learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vimpac.config import ConfigError
from vimpac.tokenizer.base import TokenizerError, load_tokenizer
from vimpac.tokenizer import vqvae as vqvae_module
from vimpac.tokenizer.train import TrainConfig, evaluate_tokenizer, train_vqvae
from vimpac.tokenizer.vqvae import (
    VQVAE,
    VQVAE_PRESETS,
    EMAQuantizer,
    VQVAEConfig,
    VQVAETokenizer,
    frames_to_pixels,
)
from vqvae_test_frames import render_frames

# Narrow networks keep these tests fast; the maths does not depend on the width.
NARROW = VQVAEConfig(width=8, channel_mult=(1, 1, 2), codebook_size=32, code_dim=8)


def _quantizer(**changes) -> EMAQuantizer:
    base = dict(codebook_size=2, code_dim=2, normalize_codes=False, ema_decay=0.5, ema_epsilon=0.0, dead_code_steps=0)
    base.update(changes)
    q = EMAQuantizer(VQVAEConfig(**base))
    q.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    q.embed_sum.copy_(q.codebook)
    q.cluster_size.fill_(1.0)
    q.initialized.fill_(1)
    return q.train()


# Three points: two next to code 0, one next to code 1.
POINTS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])


def test_shapes_and_dtypes_64_and_128_px():
    tok = VQVAETokenizer.from_config(NARROW)
    for size, grid in ((64, 8), (128, 16)):
        frames = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
        ids = tok.encode(frames)
        assert ids.dtype == torch.int64 and ids.shape == (3, grid, grid)
        assert int(ids.min()) >= 0 and int(ids.max()) < NARROW.codebook_size
        out = tok.decode(ids)
        assert out.dtype == torch.uint8 and out.shape == (3, size, size, 3)
    # Non-square frames work too (a grid per axis).
    assert tok.encode(np.zeros((1, 64, 128, 3), np.uint8)).shape == (1, 8, 16)


def test_encode_is_batched_consistently():
    tok = VQVAETokenizer.from_config(NARROW, batch_size=2)
    frames = render_frames(1, 5, 64, seed=3)
    whole = VQVAETokenizer(tok.model, batch_size=64).encode(frames)
    assert torch.equal(tok.encode(frames), whole)


def test_bad_inputs_raise_clear_errors():
    tok = VQVAETokenizer.from_config(NARROW)
    with pytest.raises(ValueError, match="uint8"):
        tok.encode(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="divisible by 8"):
        tok.encode(np.zeros((1, 60, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"ids must be in \[0, 32\)"):
        tok.decode(torch.full((1, 2, 2), 32))
    with pytest.raises(ConfigError, match="channel_mult"):
        VQVAE(VQVAEConfig(channel_mult=(1, 2)))
    # The store keeps ids and [PAD] (codebook_size + 1) as uint16.
    assert VQVAEConfig(codebook_size=65534).validate()
    with pytest.raises(ConfigError, match=r"codebook_size must fit uint16 token stores \(<= 65534\), got 65535"):
        VQVAEConfig(codebook_size=65535).validate()


def test_ema_update_matches_hand_computation():
    q = _quantizer()
    ids = q.nearest(POINTS)
    assert ids.tolist() == [0, 0, 1]
    q.update(POINTS, ids)
    # N = 0.5 * [1, 1] + 0.5 * [2, 1] = [1.5, 1]
    assert torch.allclose(q.cluster_size, torch.tensor([1.5, 1.0]))
    # m_0 = 0.5 * (0, 0) + 0.5 * ((1, 0) + (0, 1)) = (0.5, 0.5);  m_1 = 0.5 * (10, 10) + 0.5 * (9, 9)
    assert torch.allclose(q.embed_sum, torch.tensor([[0.5, 0.5], [9.5, 9.5]]))
    # e = m / N (no smoothing with epsilon 0)
    assert torch.allclose(q.codebook, torch.tensor([[1 / 3, 1 / 3], [9.5, 9.5]]))


def test_laplace_smoothing_of_cluster_sizes():
    q = _quantizer(ema_epsilon=0.5)
    q.update(POINTS, q.nearest(POINTS))
    # N = [1.5, 1], n = 2.5, K = 2: N~ = (N + 0.5) / (2.5 + 1) * 2.5 = [10/7, 15/14]
    assert torch.allclose(q.codebook, torch.tensor([[0.35, 0.35], [9.5 * 14 / 15, 9.5 * 14 / 15]]))


def test_forward_in_training_mode_updates_and_returns_commitment():
    q = _quantizer(commitment_beta=0.25)
    z = POINTS.t().reshape(1, 2, 1, 3).clone().requires_grad_(True)  # (B, D, h, w)
    out = q(z)
    assert out.ids.tolist() == [[[0, 0, 1]]]
    assert torch.allclose(q.codebook, torch.tensor([[1 / 3, 1 / 3], [9.5, 9.5]]))
    # Commitment is measured against the codes *before* this step's update: squared distances
    # 1, 1 and 2 over 6 numbers -> mean 4/6, times beta.
    assert out.commitment_loss.item() == pytest.approx(0.25 * 4 / 6)
    # Straight-through: the forward value is the code...
    assert torch.allclose(out.quantized.detach().reshape(2, 3).t(), torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 10.0]]))
    # ...and the gradient of the quantized output w.r.t. the input is the identity.
    out.quantized.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))


def test_eval_mode_leaves_codebook_alone():
    q = _quantizer().eval()
    before = q.codebook.clone()
    q(POINTS.t().reshape(1, 2, 1, 3))
    assert torch.equal(q.codebook, before)


def test_dead_codes_are_restarted_from_recent_encoder_outputs():
    torch.manual_seed(0)

    def setup(dead_code_steps: int) -> EMAQuantizer:
        q = EMAQuantizer(VQVAEConfig(codebook_size=8, code_dim=2, normalize_codes=False, ema_decay=0.9,
                                     dead_code_steps=dead_code_steps))
        far = torch.full((8, 2), 100.0)
        far[0] = 0.0  # only code 0 is anywhere near the data
        q.codebook.copy_(far)
        q.embed_sum.copy_(far)
        q.cluster_size.fill_(1.0)
        q.initialized.fill_(1)
        return q.train()

    data = torch.randn(64, 2)
    restarting, naive = setup(dead_code_steps=2), setup(dead_code_steps=0)
    for _ in range(3):
        restarting.update(data, restarting.nearest(data))
        naive.update(data, naive.nearest(data))
    # Without restarts the far codes are never chosen and never move: a collapsed codebook.
    assert naive.nearest(data).unique().numel() == 1
    assert torch.allclose(naive.codebook[1:], torch.tensor(100.0), rtol=1e-3)  # (Laplace smoothing nudges them)
    # With restarts every code now sits on the data and several of them get used.
    assert restarting.codebook.abs().max() < 10
    assert restarting.nearest(data).unique().numel() >= 4


def test_straight_through_gradient_reaches_the_encoder():
    model = VQVAE(NARROW).train()
    pixels = frames_to_pixels(torch.from_numpy(render_frames(1, 2, 32, seed=5)))
    out = model(pixels)
    out.recon_loss.backward()  # reconstruction only: the path decoder -> quantizer -> encoder
    for name, param in model.encoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert not any(b.requires_grad for b in model.quantizer.buffers())


def test_save_load_roundtrip_and_dispatch(tmp_path):
    tok = VQVAETokenizer.from_config(NARROW)
    frames = render_frames(2, 3, 64, seed=7)
    ids = tok.encode(frames)
    tok.save_pretrained(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta["kind"] == "vqvae" and meta["config"]["codebook_size"] == 32
    assert meta["tokenizer_id"] == tok.tokenizer_id

    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, VQVAETokenizer)
    assert loaded.config == NARROW
    assert loaded.tokenizer_id == tok.tokenizer_id
    assert torch.equal(loaded.encode(frames), ids)
    assert torch.equal(loaded.decode(ids), tok.decode(ids))
    # A different network has a different id.
    assert VQVAETokenizer.from_config(NARROW).tokenizer_id != tok.tokenizer_id


def test_loading_bad_folders_names_the_file(tmp_path):
    tok = VQVAETokenizer.from_config(NARROW)
    tok.save_pretrained(tmp_path / "tok")
    config_path = tmp_path / "tok" / "tokenizer.json"
    meta = json.loads(config_path.read_text())

    config_path.write_text(json.dumps({**meta, "config": {**meta["config"], "codebook_size": 64}}))
    with pytest.raises(TokenizerError, match="do not match the config"):
        load_tokenizer(tmp_path / "tok")

    config_path.write_text(json.dumps({**meta, "config": {**meta["config"], "widht": 8}}))
    with pytest.raises(TokenizerError, match="widht"):
        load_tokenizer(tmp_path / "tok")

    # Weights of another network with the same config: the recorded id no longer matches.
    weights_path = tmp_path / "tok" / "model.safetensors"
    config_path.write_text(json.dumps(meta))
    VQVAETokenizer.from_config(NARROW).save_pretrained(tmp_path / "other")
    weights_path.write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(TokenizerError, match="records vqvae-"):
        load_tokenizer(tmp_path / "tok")

    weights_path.write_bytes(b"not safetensors")
    with pytest.raises(TokenizerError, match="model.safetensors"):
        load_tokenizer(tmp_path / "tok")


@pytest.mark.parametrize("field, value", [("width", 10**6), ("num_res_blocks", 10**6), ("code_dim", 10**6),
                                          ("channel_mult", [1, 10**6, 1]), ("codebook_size", 65534)])
def test_a_config_claiming_other_sizes_is_refused_before_anything_is_built(tmp_path, monkeypatch, field, value):
    # Built first, these configs would allocate terabytes or create modules for hours.
    VQVAETokenizer.from_config(NARROW).save_pretrained(tmp_path / "tok")
    config_path = tmp_path / "tok" / "tokenizer.json"
    meta = json.loads(config_path.read_text())
    meta["config"][field] = value
    config_path.write_text(json.dumps(meta))

    def built(*args, **kwargs):
        raise AssertionError("a VQ-VAE was built from a tokenizer.json its weights do not match")
    monkeypatch.setattr(vqvae_module, "VQVAE", built)
    with pytest.raises(TokenizerError, match=f"model.safetensors: weights do not match the config in {config_path}: "
                                             ".*config (implies|says)"):
        load_tokenizer(tmp_path / "tok")


@pytest.mark.parametrize("cfg", [NARROW, *VQVAE_PRESETS.values(), VQVAEConfig(num_res_blocks=3, channel_mult=(1, 2, 4))])
def test_the_size_check_accepts_the_networks_own_weights(cfg):
    shapes = {key: tuple(value.shape) for key, value in VQVAE(cfg).state_dict().items()}
    assert vqvae_module._size_problems(cfg, shapes) == []


def test_presets_are_valid():
    for name, cfg in VQVAE_PRESETS.items():
        assert cfg.validate() is cfg, name


@pytest.fixture
def one_thread():
    # On a loaded 2-core machine two torch threads competing with other processes make small
    # convolutions many times slower; one thread keeps this test at a few seconds everywhere.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_short_training_run_learns_and_uses_many_codes(one_thread):
    # Held-out frames come from videos the model never saw.
    train_frames = render_frames(12, 8, 32, seed=1)
    val_frames = render_frames(3, 8, 32, seed=2)
    cfg = VQVAEConfig(width=16, channel_mult=(1, 1, 2), codebook_size=64, code_dim=16)
    untrained = evaluate_tokenizer(VQVAETokenizer.from_config(cfg), val_frames)
    result = train_vqvae(train_frames, cfg, TrainConfig(steps=100, batch_size=32, warmup_steps=10), progress=False)
    trained = evaluate_tokenizer(result.tokenizer, val_frames)
    assert result.steps_done == 100 and len(result.history) >= 2
    # An untrained decoder outputs ~mid-grey; learning must beat that clearly on unseen videos.
    assert trained["psnr_db"] > untrained["psnr_db"] + 1.5, (untrained, trained)
    # Without restarts the codebook collapses to a few codes (see the dead-code test).
    assert trained["codes_used_fraction"] >= 0.5, trained
    assert trained["perplexity"] > 16, trained


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tokens_match_cpu_and_training_runs_on_cuda():
    cpu = VQVAETokenizer.from_config(NARROW, bf16=False)
    frames = render_frames(2, 4, 64, seed=11)
    gpu = VQVAETokenizer(VQVAE(NARROW), device="cuda", bf16=True)
    gpu.model.load_state_dict(cpu.model.state_dict())
    agreement = float((gpu.encode(frames) == cpu.encode(frames)).double().mean())
    assert agreement >= 0.97, agreement
    assert gpu.decode(cpu.encode(frames)).shape == frames.shape
    result = train_vqvae(frames, NARROW, TrainConfig(steps=3, batch_size=4), device="cuda", progress=False)
    assert result.steps_done == 3 and result.tokenizer.encode(frames).shape == (8, 8, 8)
