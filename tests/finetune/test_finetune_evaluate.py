"""Multi-view evaluation: averaging against a direct loop, view choice, the CLI's report."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from process_helpers import results_of, spawn_ranks
from vimpac.cli import main
from vimpac.data.clips import uniform_clip_starts
from vimpac.finetune.errors import FinetuneError
from vimpac.finetune.evaluate import (CPU_CLIPS_PER_FORWARD, GPU_CLIPS_PER_FORWARD, THREE_CROP_VIEWS, clips_per_forward,
                                     evaluate_classifier, evaluation_views, predict_videos)
from vimpac.model import VimpacForClassification
from vimpac.store import TokenStore

sys.path.insert(0, str(Path(__file__).parent))
from finetune_helpers import ALL12, CODEBOOK, NOFLIP6, make_store, tiny_model_config  # noqa: E402


def random_classifier(num_classes: int = 3, seed: int = 0) -> VimpacForClassification:
    torch.manual_seed(seed)
    model = VimpacForClassification(tiny_model_config(), num_classes)
    torch.nn.init.normal_(model.head.cls_fc.weight, std=1.0)  # non-uniform predictions
    return model.eval()


def test_view_averaging_matches_a_direct_loop(tmp_path):
    store = TokenStore.open(make_store(tmp_path / "s", num_videos=5, views=ALL12))
    model = random_classifier()
    result = evaluate_classifier(model, store, frames=4, temporal_clips=3, spatial_crops=3, max_batch=7)
    assert result.settings["views"] == list(THREE_CROP_VIEWS)
    for v, key in enumerate(store.keys()):
        probs = []
        for view in ("s1.00_top_left", "s1.00_center", "s1.00_bottom_right"):
            index = store.index_of(key, view)
            tokens = store.tokens(index)
            for start in uniform_clip_starts(tokens.shape[0], 4, 3):
                clip = np.full((4, 3, 3), store.pad_id, dtype=np.int64)
                part = tokens[start:start + 4]
                clip[:len(part)] = part
                with torch.no_grad():
                    logits = model(torch.from_numpy(clip)[None])
                probs.append(torch.softmax(logits, -1)[0].numpy())
        np.testing.assert_allclose(result.probabilities[v], np.mean(probs, axis=0), rtol=1e-5, atol=1e-6)
    expected_top1 = np.mean(result.probabilities.argmax(1) == result.labels)
    assert result.metrics.top1 == pytest.approx(expected_top1)


class ForwardSizes(torch.nn.Module):
    """The classifier, recording how many clips each forward gets."""

    def __init__(self, model):
        super().__init__()
        self.model, self.sizes = model, []
        self.num_classes, self.config = model.num_classes, model.config

    def forward(self, tokens):
        self.sizes.append(tokens.shape[0])
        return self.model(tokens)


@pytest.mark.parametrize("bf16", [False, True])
def test_max_batch_caps_the_clips_of_a_forward_also_within_a_video(tmp_path, bf16):
    """3 crops x 3 clips = 9 views per video: with max_batch 4 a video is scored in forwards of
    at most 4 clips (it went through in one forward of 9 whatever max_batch said), with the
    probabilities of one forward per video."""
    store = TokenStore.open(make_store(tmp_path / "s", num_videos=3, views=ALL12))
    model = ForwardSizes(random_classifier())
    keys = store.keys()
    whole = predict_videos(model, store, keys, THREE_CROP_VIEWS, 4, 3, bf16=bf16, max_batch=9)
    assert model.sizes == [9, 9, 9]
    model.sizes.clear()
    split = predict_videos(model, store, keys, THREE_CROP_VIEWS, 4, 3, bf16=bf16, max_batch=4)
    assert model.sizes == [4, 4, 1] * 3
    # Batch composition only changes the kernels' summation order (bf16: its rounding).
    np.testing.assert_allclose(split, whole, rtol=1e-2 if bf16 else 1e-5, atol=1e-3 if bf16 else 1e-6)
    np.testing.assert_allclose(split.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(FinetuneError, match="max_batch"):
        predict_videos(model, store, keys, THREE_CROP_VIEWS, 4, 3, max_batch=0)


def test_clips_per_forward_defaults_to_few_on_a_cpu_and_many_on_a_gpu():
    """Forwards of 32 clips ran 1.2-1.8x slower per clip than forwards of 2-4 on a CPU (fresh
    pages for every big activation); a GPU wants big batches. An explicit number wins."""
    assert clips_per_forward(None, "cpu") == CPU_CLIPS_PER_FORWARD < GPU_CLIPS_PER_FORWARD
    assert clips_per_forward(None, torch.device("cuda", 1)) == GPU_CLIPS_PER_FORWARD  # no GPU needed to ask
    assert clips_per_forward(9, "cpu") == 9 and clips_per_forward(2, "cuda") == 2
    with pytest.raises(FinetuneError, match="max_batch"):
        clips_per_forward(0, "cuda")


def test_evaluate_cli_without_batch_size_scores_in_forwards_of_the_cpu_default(tmp_path, monkeypatch):
    import vimpac.finetune.evaluate as evaluate_module

    store_dir = make_store(tmp_path / "s", num_videos=2, views=ALL12)
    random_classifier().save_pretrained(tmp_path / "model")
    forwards = []
    real = evaluate_module.average_view_probabilities
    monkeypatch.setattr(evaluate_module, "average_view_probabilities",
                        lambda model, inputs, *a, **k: forwards.append(inputs.shape[0]) or real(model, inputs, *a, **k))
    code = main(["evaluate", "--checkpoint", str(tmp_path / "model"), "--store", str(store_dir),
                 "--out", str(tmp_path / "eval"), "--temporal-clips", "3", "--spatial-crops", "3", "--no-progress"])
    assert code == 0
    assert forwards == [4, 4, 1] * 2  # 9 views per video, in forwards of at most CPU_CLIPS_PER_FORWARD (was 32)
    assert CPU_CLIPS_PER_FORWARD == 4


def test_evaluating_from_a_training_loop_leaves_the_model_training(tmp_path):
    store = TokenStore.open(make_store(tmp_path / "s", num_videos=4, views=ALL12))
    torch.manual_seed(0)
    model = VimpacForClassification(tiny_model_config(dropout=0.5), 3)
    torch.nn.init.normal_(model.head.cls_fc.weight, std=1.0)
    expected = evaluate_classifier(model.eval(), store, frames=4, temporal_clips=2).probabilities
    model.train()
    result = evaluate_classifier(model, store, frames=4, temporal_clips=2)
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-6, atol=1e-7)  # in eval mode
    assert all(module.training for module in model.modules())


def test_view_choice():
    assert evaluation_views(ALL12, 3) == THREE_CROP_VIEWS
    assert evaluation_views(NOFLIP6, 1) == ("s1.00_center",)
    assert evaluation_views(("s1.00_center",), 3) == ("s1.00_center",)  # a center-only store
    with pytest.raises(FinetuneError, match="s1.00_center"):
        evaluation_views(("s1.25_center",), 1)


def test_evaluate_cli_writes_json_and_png(tmp_path):
    store_dir = make_store(tmp_path / "s", num_videos=6, views=NOFLIP6)
    random_classifier().save_pretrained(tmp_path / "model")
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(tmp_path / "model"), "--store", str(store_dir), "--out", str(out),
                 "--temporal-clips", "2", "--spatial-crops", "3", "--bf16", "--no-progress"])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert report["num_examples"] == 6 and len(report["predictions"]) == 6
    assert report["settings"]["views"] == list(THREE_CROP_VIEWS)
    assert set(report["per_class"]) == {"class0", "class1", "class2"}
    assert sum(map(sum, report["confusion_matrix"]["counts"])) == 6
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def _evaluate_worker(rank, port, argv, queue):
    import contextlib
    import io
    import os

    from vimpac.finetune import evaluate

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    scored = []
    predict = evaluate.predict_videos

    def recording(model, store, keys, *args, **kwargs):
        scored.extend(keys)
        return predict(model, store, keys, *args, **kwargs)

    evaluate.predict_videos = recording
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(argv)
    queue.put((rank, code, scored, printed.getvalue()))


def test_evaluate_under_torchrun_scores_each_video_once(tmp_path):
    """2 ranks, 5 videos: rank 0 scores 3, rank 1 2; rank 0 writes the report of one process."""
    store_dir = make_store(tmp_path / "s", num_videos=5, views=ALL12)
    random_classifier().save_pretrained(tmp_path / "model")

    def argv(out):
        return ["evaluate", "--checkpoint", str(tmp_path / "model"), "--store", str(store_dir), "--out", str(out),
                "--temporal-clips", "2", "--no-progress"]

    procs, queue = spawn_ranks(_evaluate_worker, argv(tmp_path / "ddp"))
    outcomes = {rank: rest for rank, *rest in results_of(queue, procs, count=len(procs))}
    keys = TokenStore.open(store_dir).keys()
    assert outcomes[0][:2] == [0, keys[0::2]] and outcomes[1][:2] == [0, keys[1::2]]
    assert "5 videos" in outcomes[0][2] and outcomes[1][2] == ""  # one report
    assert main(argv(tmp_path / "one")) == 0
    ddp, one = (json.loads((tmp_path / out / "results.json").read_text()) for out in ("ddp", "one"))
    assert [p["key"] for p in ddp["predictions"]] == keys
    for a, b in zip(ddp["predictions"], one["predictions"]):
        assert a["predicted"] == b["predicted"] and a["confidence"] == pytest.approx(b["confidence"], rel=1e-5)
    assert ddp["confusion_matrix"] == one["confusion_matrix"] and ddp["num_examples"] == 5


def test_evaluate_refuses_a_pretraining_folder(tmp_path, capsys):
    from vimpac.model import VimpacForPretraining

    VimpacForPretraining(tiny_model_config()).save_pretrained(tmp_path / "pt")
    store_dir = make_store(tmp_path / "s", num_videos=3)
    code = main(["evaluate", "--checkpoint", str(tmp_path / "pt"), "--store", str(store_dir),
                 "--out", str(tmp_path / "e"), "--no-progress"])
    assert code == 2 and "fine-tuned classifier" in capsys.readouterr().err


def test_evaluate_refuses_a_model_of_another_codebook(tmp_path, capsys):
    from vimpac.model import VimpacForClassification

    VimpacForClassification(tiny_model_config(codebook_size=2 * CODEBOOK), 3).save_pretrained(tmp_path / "model")
    store_dir = make_store(tmp_path / "s", num_videos=3)
    code = main(["evaluate", "--checkpoint", str(tmp_path / "model"), "--store", str(store_dir),
                 "--out", str(tmp_path / "e"), "--no-progress"])
    assert code == 2 and f"codebook of {2 * CODEBOOK} codes" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device, message", [("cuda", "torch sees no CUDA device"),
                                             ("tpu", "expected cpu, cuda or cuda:N")])
def test_evaluate_refuses_a_device_torch_cannot_use(tmp_path, capsys, device, message):
    random_classifier().save_pretrained(tmp_path / "model")
    store_dir = make_store(tmp_path / "s", num_videos=3)
    code = main(["evaluate", "--checkpoint", str(tmp_path / "model"), "--store", str(store_dir),
                 "--out", str(tmp_path / "e"), "--device", device, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("vimpac evaluate: error: --device: ") and message in err


def test_evaluate_accepts_device_auto_like_pretrain_and_finetune(tmp_path):
    # "auto" was refused as "expected cpu, cuda or cuda:N" by evaluate, probe, embed, tokenize and
    # analyze reconstruct, while pretrain, finetune and train-tokenizer took it.
    random_classifier().save_pretrained(tmp_path / "model")
    store_dir = make_store(tmp_path / "s", num_videos=3)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "model"), "--store", str(store_dir),
                 "--out", str(tmp_path / "e"), "--device", "auto", "--temporal-clips", "1", "--no-progress"]) == 0


def test_evaluate_cli_repeats_the_protocol_of_a_fine_tuning_run(tmp_path):
    # An ssv2-recipe run evaluates the center crop only (Table 4); `vimpac evaluate` on that run
    # used to average the 3 crops, so its numbers differed from the run's own eval/results.json.
    store_dir = make_store(tmp_path / "s", num_videos=3, views=NOFLIP6)
    random_classifier().save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / "finetune.json").write_text(json.dumps({"resolved": {"temporal_clips": 2, "spatial_crops": 1}}))

    def evaluate(checkpoint, *options) -> dict:
        out = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}"
        code = main(["evaluate", "--checkpoint", str(checkpoint), "--store", str(store_dir), "--out", str(out),
                     "--no-progress", *options])
        assert code == 0
        return json.loads((out / "results.json").read_text())["settings"]

    for checkpoint in (tmp_path / "run", tmp_path / "run" / "model"):
        settings = evaluate(checkpoint)
        assert settings["views"] == ["s1.00_center"] and settings["temporal_clips"] == 2
    settings = evaluate(tmp_path / "run", "--spatial-crops", "3", "--temporal-clips", "3")
    assert settings["views"] == list(THREE_CROP_VIEWS) and settings["temporal_clips"] == 3
    random_classifier().save_pretrained(tmp_path / "plain")  # not a run: the paper's 10 clips x 3 crops
    settings = evaluate(tmp_path / "plain")
    assert settings["views"] == list(THREE_CROP_VIEWS) and settings["temporal_clips"] == 10


def test_evaluate_cli_names_an_unreadable_run_record_unless_the_protocol_is_given(tmp_path, capsys):
    store_dir = make_store(tmp_path / "s", num_videos=3, views=NOFLIP6)
    random_classifier().save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / "finetune.json").write_text("{}")
    args = ["evaluate", "--checkpoint", str(tmp_path / "run"), "--store", str(store_dir), "--out", str(tmp_path / "e"),
            "--no-progress"]
    assert main(args) == 2 and "finetune.json: cannot read the run's resolved" in capsys.readouterr().err
    assert main(args + ["--temporal-clips", "1", "--spatial-crops", "1"]) == 0


def test_evaluate_refuses_a_store_tokenized_unlike_the_runs_training_store(tmp_path, capsys):
    # finetune.json did not record how the training store was tokenized, so a run trained on 2 fps
    # clips was evaluated on a 4 fps store (each clip spanning half the time it learned on) and
    # a store of another frame size with silently interpolated position tables.
    train = make_store(tmp_path / "train", num_videos=3)
    run = tmp_path / "run"
    assert main(["finetune", "--train-store", str(train), "--from-scratch", "--preset", "tiny", "--recipe",
                 "synthetic", "--out", str(run), "--frames", "4", "--steps", "1", "--batch-size", "2",
                 "--no-progress"]) == 0
    capsys.readouterr()

    def evaluate(checkpoint, store) -> tuple[int, str]:
        code = main(["evaluate", "--checkpoint", str(checkpoint), "--store", str(store), "--out", str(tmp_path / "e"),
                     "--temporal-clips", "1", "--spatial-crops", "1", "--no-progress"])
        return code, capsys.readouterr().err

    copied = tmp_path / "copied-model"
    shutil.copytree(run / "model", copied)
    assert json.loads((copied / "config.json").read_text())["class_names"] == json.loads(
        (run / "finetune.json").read_text())["class_names"]
    others = [(dict(fps=4.0), "sampled at 4 fps, the fine-tuning run's training store at 2 fps"),
              (dict(grid=(4, 4)), "frames of 32 px, the fine-tuning run's training store of 24 px"),
              (dict(tokenizer_id="tok-other"), "tokenizer_id='tok-other', but 'tok-test' was expected")]
    for i, (other, message) in enumerate(others):
        store = make_store(tmp_path / f"other{i}", num_videos=3, **other)
        # The run, its model folder, and that folder copied out of the run (config.json records it too).
        for checkpoint in (run, run / "model", copied):
            code, err = evaluate(checkpoint, store)
            assert code == 2 and str(store) in err and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "e").exists()
    assert evaluate(run, make_store(tmp_path / "same", num_videos=3, seed=5)) == (0, "")
    # A run folder from before finetune.json recorded the training store: unknown, not checked.
    record = json.loads((run / "finetune.json").read_text())
    (run / "finetune.json").write_text(json.dumps({**record, "train_store_meta": {"fps": "2"}}))
    code, err = evaluate(run, tmp_path / "same")
    assert code == 2 and "finetune.json: cannot read the training store settings" in err
    del record["train_store_meta"]
    (run / "finetune.json").write_text(json.dumps(record))
    model_config = json.loads((run / "model" / "config.json").read_text())
    del model_config["train_store_meta"]
    (run / "model" / "config.json").write_text(json.dumps(model_config))
    assert evaluate(run, tmp_path / "other0")[0] == 0


def test_progress_without_a_terminal_is_lines_not_a_bar(tmp_path, capsys):
    # Under pytest stderr is no terminal, as in a cluster job's log: a tqdm bar there was one
    # endless line of carriage returns.
    store = TokenStore.open(make_store(tmp_path / "s", num_videos=4, views=NOFLIP6))
    evaluate_classifier(random_classifier(), store, frames=4, temporal_clips=1, spatial_crops=1, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("evaluate: ")]
    assert lines and lines[-1].startswith("evaluate: 4/4 video (100%)")
