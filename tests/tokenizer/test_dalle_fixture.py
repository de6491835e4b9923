"""Our DALL-E dVAE reproduces ../shared/fixtures/dalle-dvae (made with the `dall_e` package).

Tolerances follow the fixture README: atol = rtol = 1e-5 for floats in fp32, tokens exact.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared_fixtures import fixture_path
from vimpac.tokenizer.dalle import (
    DALLE_PRESETS,
    DalleTokenizer,
    map_pixels,
    reconstruct,
    unmap_pixels,
)

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    with np.load(fixture_path("dalle-dvae", "tiny_dvae.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def tokenizer(fixture) -> DalleTokenizer:
    enc = {k[len("encoder/"):]: torch.from_numpy(v) for k, v in fixture.items() if k.startswith("encoder/")}
    dec = {k[len("decoder/"):]: torch.from_numpy(v) for k, v in fixture.items() if k.startswith("decoder/")}
    assert len(enc) == 42 and len(dec) == 44  # the counts the README lists
    # from_state_dicts loads strictly: any renamed / missing / extra key fails here.
    return DalleTokenizer.from_state_dicts(DALLE_PRESETS["tiny"], enc, dec, precision="fp32")


def _close(actual: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual.detach().numpy(), expected, **TOL)


def test_state_dict_names_and_shapes_match_the_package(fixture, tokenizer):
    ours = {**{f"encoder/{k}": v for k, v in tokenizer.encoder.state_dict().items()},
            **{f"decoder/{k}": v for k, v in tokenizer.decoder.state_dict().items()}}
    theirs = {k: v for k, v in fixture.items() if k.startswith(("encoder/", "decoder/"))}
    assert sorted(ours) == sorted(theirs)
    assert all(tuple(ours[k].shape) == theirs[k].shape for k in theirs)
    # The README's structural facts: no id_path where widths agree, one where they differ.
    assert "encoder/blocks.group_1.block_1.id_path.w" not in ours
    assert "encoder/blocks.group_2.block_1.id_path.w" in ours
    assert "decoder/blocks.group_1.block_1.id_path.w" in ours


def test_map_pixels_matches_fixture_input(fixture):
    _close(map_pixels(torch.from_numpy(fixture["input_pixels_raw"])), fixture["input_pixels"])
    x = torch.linspace(0, 1, 11)
    torch.testing.assert_close(unmap_pixels(map_pixels(x)), x)
    assert float(map_pixels(torch.zeros(1))) == pytest.approx(0.1)
    assert float(unmap_pixels(torch.tensor([-5.0, 5.0])).sum()) == 1.0  # clamped to [0, 1]


def test_encoder_stages_logits_and_tokens(fixture, tokenizer):
    x = torch.from_numpy(fixture["input_pixels"])
    with torch.inference_mode():
        stages = dict(tokenizer.encoder.stages(x))
    for name in ("input", "group_1", "group_2", "group_3", "group_4"):
        _close(stages[name], fixture[f"debug/encoder/{name}"])
    _close(stages["output"], fixture["out/encoder_logits"])
    tokens = stages["output"].argmax(dim=1)
    assert torch.equal(tokens, torch.from_numpy(fixture["out/decoder_input_onehot_argmax"]))


@pytest.mark.parametrize("ids_key,out_key", [
    ("out/decoder_input_onehot_argmax", "out/decoder_output"),
    ("input_decoder_random_tokens", "out/decoder_output_random_tokens"),
])
def test_decoder_on_one_hot_and_by_id_lookup(fixture, tokenizer, ids_key, out_key):
    ids = torch.from_numpy(fixture[ids_key])
    onehot = F.one_hot(ids, 512).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        stages = dict(tokenizer.decoder.stages(onehot))
        by_id = tokenizer.decoder.forward_ids(ids)
    if out_key == "out/decoder_output":
        for name in ("input", "group_1", "group_2", "group_3", "group_4"):
            _close(stages[name], fixture[f"debug/decoder/{name}"])
    _close(stages["output"], fixture[out_key])
    _close(by_id, fixture[out_key])


def test_reconstruction(fixture, tokenizer):
    with torch.inference_mode():
        out = tokenizer.decoder(torch.from_numpy(fixture["out/decoder_output"]).new_zeros(0, 512, 4, 4))
        assert out.shape == (0, 6, 32, 32)
        recon = reconstruct(torch.from_numpy(fixture["out/decoder_output"]))
    _close(recon, fixture["out/reconstruction"])


def test_tokenizer_decode_is_the_rounded_reconstruction(fixture, tokenizer):
    ids = torch.from_numpy(fixture["out/decoder_input_onehot_argmax"])
    frames = tokenizer.decode(ids)
    assert frames.dtype == torch.uint8 and frames.shape == (2, 32, 32, 3)
    expected = np.round(fixture["out/reconstruction"] * 255).transpose(0, 2, 3, 1)
    # Rounding of values within float noise of .5 may differ by one level, nowhere more.
    diff = np.abs(frames.numpy().astype(np.int32) - expected.astype(np.int32))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_tokenizer_encode_follows_vimpac_pixel_pipeline(fixture, tokenizer):
    """uint8 frames -> /255 -> map_pixels -> encoder -> argmax, which is what VIMPAC's
    [-1, 1] -> x * 0.5 + 0.5 -> map_pixels detour computes."""
    frames = torch.from_numpy((fixture["input_pixels_raw"] * 255).round().astype(np.uint8)).permute(0, 2, 3, 1)
    ids = tokenizer.encode(frames)
    assert ids.dtype == torch.int64 and ids.shape == (2, 4, 4)
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    vimpac_style = map_pixels((x * 2 - 1) * 0.5 + 0.5)
    with torch.inference_mode():
        expected = tokenizer.encoder(vimpac_style).argmax(dim=1)
    assert torch.equal(ids, expected)
    np.testing.assert_allclose(tokenizer.logits(frames).numpy(),
                               tokenizer.encoder(vimpac_style).detach().numpy(), **TOL)


def test_bf16_fast_path_close_to_fp32(fixture, tokenizer):
    enc = {k[len("encoder/"):]: torch.from_numpy(v) for k, v in fixture.items() if k.startswith("encoder/")}
    dec = {k[len("decoder/"):]: torch.from_numpy(v) for k, v in fixture.items() if k.startswith("decoder/")}
    fast = DalleTokenizer.from_state_dicts(DALLE_PRESETS["tiny"], enc, dec, precision="bf16")
    frames = torch.from_numpy((fixture["input_pixels_raw"] * 255).round().astype(np.uint8)).permute(0, 2, 3, 1)
    logits, expected = fast.logits(frames), tokenizer.logits(frames)
    # bf16 keeps 8 significant bits (relative rounding 2^-8 ~ 4e-3 per op); a handful of
    # layers stay within a few percent of the logits' scale, a wrong layer would not.
    scale = expected.abs().max()
    print("bf16 max abs error / scale:", float((logits - expected).abs().max() / scale))
    assert (logits - expected).abs().max() < 0.03 * scale
    assert fast.decode(fast.encode(frames)).shape == (2, 32, 32, 3)


def test_rescored_tokens_equal_an_fp32_logit_layer(fixture):
    """The default fast path (bf16 logit layer, top-k re-scored in fp32) picks the same codes
    as the fast path with the whole logit layer in fp32; top-1 "rescoring" is the bf16 argmax."""
    enc = {k[len("encoder/"):]: torch.from_numpy(v) for k, v in fixture.items() if k.startswith("encoder/")}
    dec = {k[len("decoder/"):]: torch.from_numpy(v) for k, v in fixture.items() if k.startswith("decoder/")}
    make = lambda mode, k=4: DalleTokenizer.from_state_dicts(  # noqa: E731
        DALLE_PRESETS["tiny"], enc, dec, precision="bf16", logit_precision=mode, rescore_top_k=k)
    frames = np.random.default_rng(5).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    frames[3:] = frames[3:] // 4 + 96  # low-contrast frames too: smaller logit margins
    assert torch.equal(make("rescore").encode(frames), make("fp32").encode(frames))
    assert torch.equal(make("rescore", k=1).encode(frames), make("bf16").encode(frames))
    with pytest.raises(ValueError, match="logit_precision 'half'"):
        make("half")
