"""Fine-tuning: zero head, loading with interpolation, layer decay, the run and its resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from vimpac.cli import main
from vimpac.engine.checkpoint import CheckpointError
from vimpac.engine.metrics import read_metrics
from vimpac.engine.trainer import DistInfo
from vimpac.finetune.errors import FinetuneError
from vimpac.finetune.layer_decay import layerwise_param_groups
from vimpac.finetune.loading import build_classifier
from vimpac.finetune.runner import FinetuneConfig, run_finetune, training_views
from vimpac.finetune.task import FinetuneTask
from vimpac.model import VimpacForPretraining
from vimpac.model.interpolate import resize_table
from vimpac.store import TokenStore

sys.path.insert(0, str(Path(__file__).parent))
from finetune_helpers import ALL12, CODEBOOK, GRID, make_store, tiny_model_config  # noqa: E402


def test_zero_head_gives_uniform_predictions_at_step_zero(tmp_path):
    torch.manual_seed(0)
    VimpacForPretraining(tiny_model_config()).save_pretrained(tmp_path / "pt")
    model = build_classifier(5, 4, GRID, CODEBOOK, pretrained=tmp_path / "pt").eval()
    tokens = torch.randint(0, CODEBOOK, (3, 4, *GRID))
    probs = torch.softmax(model(tokens), -1)
    assert torch.allclose(probs, torch.full_like(probs, 0.2))


def test_t5_checkpoint_loads_into_t8_with_interpolated_tables(tmp_path):
    torch.manual_seed(0)
    pretrained = VimpacForPretraining(tiny_model_config(max_frames=5))
    pretrained.save_pretrained(tmp_path / "pt")
    model = build_classifier(3, 8, (2, 3), CODEBOOK, pretrained=tmp_path / "pt")
    pos, old = model.backbone.positional_embedding, pretrained.backbone.positional_embedding
    assert model.config.max_frames == 8 and pos.temporal_pos_embedding.shape[0] == 8
    # Linear interpolation (align_corners=False) of the 5-row table, computed independently.
    old_t = old.temporal_pos_embedding.detach()
    expected = torch.empty(8, old_t.shape[1])
    for i in range(8):
        x = min(max((i + 0.5) * 5 / 8 - 0.5, 0.0), 4.0)
        lo = int(x)
        hi = min(lo + 1, 4)
        expected[i] = (1 - (x - lo)) * old_t[lo] + (x - lo) * old_t[hi]
    torch.testing.assert_close(pos.temporal_pos_embedding.detach(), expected)
    torch.testing.assert_close(pos.height_pos_embedding.detach(), resize_table(old.height_pos_embedding.detach(), 2))
    torch.testing.assert_close(model.backbone.embedding.weight, pretrained.backbone.embedding.weight)
    assert not model.head.cls_fc.weight.any() and not model.head.cls_fc.bias.any()


def test_codebook_mismatch_is_refused(tmp_path):
    VimpacForPretraining(tiny_model_config()).save_pretrained(tmp_path / "pt")
    with pytest.raises(FinetuneError, match="codebook"):
        build_classifier(3, 4, GRID, CODEBOOK + 1, pretrained=tmp_path / "pt")


def test_layer_decay_groups():
    model = build_classifier(3, 4, GRID, CODEBOOK, preset=None, overrides={"layers": 2, "dim": 32, "heads": 2})
    groups = layerwise_param_groups(model, lr=1.0, weight_decay=0.1, decay=0.5, num_layers=2)
    by_name = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_name[id(named["head.cls_fc.weight"])]["lr"] == 1.0
    assert by_name[id(named["backbone.transformer.resblocks.1.mlp.c_fc.weight"])]["lr"] == 0.5
    assert by_name[id(named["backbone.transformer.resblocks.0.mlp.c_fc.weight"])]["lr"] == 0.25
    assert by_name[id(named["backbone.embedding.weight"])]["lr"] == 0.125
    assert by_name[id(named["backbone.transformer.resblocks.0.mlp.c_fc.bias"])]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(named)
    assert groups[0]["lr"] == 1.0


def test_batches_are_deterministic_and_cover_each_epoch(tmp_path):
    store = TokenStore.open(make_store(tmp_path / "s", num_videos=6, views=ALL12))
    task = FinetuneTask(store, frames=4, batch_size=3, train_views=training_views(store.views, flip=False))
    assert all(not v.endswith("_flip") for v in task.views) and len(task.views) == 6
    a = task.batch(2, 0, DistInfo())
    b = task.batch(2, 0, DistInfo())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    epoch = sorted(task.video_at(p) for p in range(6))
    assert epoch == list(range(6))
    assert a[0].shape == (3, 4, *GRID)


def test_two_ranks_together_draw_the_batch_of_one_process(tmp_path):
    """Same videos, views and crops whatever the split into ranks and accumulation steps."""
    store = TokenStore.open(make_store(tmp_path / "s", num_videos=6, views=ALL12, frames=(5, 12)))
    one = FinetuneTask(store, frames=4, batch_size=4)
    ranks = FinetuneTask(store, frames=4, batch_size=2)
    accumulated = FinetuneTask(store, frames=4, batch_size=1, grad_accum_steps=2)
    for step in range(3):
        tokens, labels = one.batch(step, 0, DistInfo())
        split = [ranks.batch(step, 0, DistInfo(r, 2)) for r in range(2)]
        assert torch.equal(torch.cat([t for t, _ in split]), tokens) and torch.equal(torch.cat([y for _, y in split]), labels)
        split = [accumulated.batch(step, m, DistInfo(r, 2)) for m in range(2) for r in range(2)]
        assert torch.equal(torch.cat([t for t, _ in split]), tokens)


def ft_config(tmp_path, **changes) -> FinetuneConfig:
    base = dict(train_store=str(tmp_path / "train"), val_store=str(tmp_path / "val"), out=str(tmp_path / "run"),
                pretrained=str(tmp_path / "pt"), recipe="synthetic", frames=4, steps=6, batch_size=4, lr=1e-3,
                temporal_clips=2, log_every=1, checkpoint_every=3, deterministic=True, progress=False,
                label_smoothing=0.1, layer_decay=0.8)
    base.update(changes)
    return FinetuneConfig(**base)


@pytest.fixture
def stores(tmp_path):
    make_store(tmp_path / "train", num_videos=9, seed=1)
    make_store(tmp_path / "val", num_videos=6, seed=2)
    torch.manual_seed(0)
    VimpacForPretraining(tiny_model_config()).save_pretrained(tmp_path / "pt")
    return tmp_path


def train_losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if r["split"] == "train"]


def test_stop_and_resume_repeats_the_losses(stores):
    tmp_path = stores
    full = run_finetune(ft_config(tmp_path, out=str(tmp_path / "full")))
    assert full.status == "finished" and full.steps == 6
    assert set(full.evaluation) == {"top1", "top5", "mean_class"}
    assert (tmp_path / "full" / "eval" / "results.json").is_file()
    part = run_finetune(ft_config(tmp_path, out=str(tmp_path / "part"), max_minutes=0.0))
    assert part.status == "time_limit" and part.steps == 1
    with pytest.raises(CheckpointError, match="--resume"):
        run_finetune(ft_config(tmp_path, out=str(tmp_path / "part")))
    with pytest.raises(FinetuneError, match="different settings"):
        run_finetune(ft_config(tmp_path, out=str(tmp_path / "part"), lr=5e-4, resume=True))
    # The run folder moved (a cluster's scratch space) and the store spelled relative to another
    # folder; fewer evaluation clips per forward (memory only) is no different setting either.
    (tmp_path / "part").rename(tmp_path / "moved")
    moved = ft_config(tmp_path, out=str(tmp_path / "moved"), resume=True,
                      train_store=str(tmp_path / "val" / ".." / "train"), eval_batch_size=3)
    resumed = run_finetune(moved)
    assert resumed.status == "finished"
    assert train_losses(tmp_path / "moved") == train_losses(tmp_path / "full")
    assert len(train_losses(tmp_path / "full")) == 6



def test_resume_from_another_working_folder(stores, monkeypatch):
    # Started with relative paths, resumed by a job script from elsewhere with absolute ones:
    # finetune.json kept the paths as typed and read them against the new folder, so the same
    # store and model were refused as "different settings ['pretrained', 'train_store']".
    tmp_path = stores
    monkeypatch.chdir(tmp_path)
    relative = dict(train_store="train", val_store="val", pretrained="pt", steps=2)
    part = run_finetune(ft_config(tmp_path, out="part", max_minutes=0.0, **relative))
    assert part.status == "time_limit"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    resumed = run_finetune(ft_config(tmp_path, out=str(tmp_path / "part"), steps=2, resume=True))
    assert resumed.status == "finished"


def test_finetune_cli_eval_batch_size_caps_the_clips_of_every_evaluation_forward(stores, monkeypatch, capsys):
    # `vimpac finetune` had no option for it: the periodic validation and the final evaluation put
    # up to 32 clips through the model at once whatever the memory (`vimpac evaluate` has --batch-size).
    import vimpac.finetune.evaluate as evaluate_module

    forwards = []
    real = evaluate_module.average_view_probabilities

    def recording(model, inputs, *args, **kwargs):
        forwards.append(inputs.shape[0])
        return real(model, inputs, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "average_view_probabilities", recording)
    clips, cap = 3, 2  # 3 clips of the center crop per video: forwards of 2 and 1 clips
    code = main(["finetune", "--train-store", str(stores / "train"), "--val-store", str(stores / "val"),
                 "--pretrained", str(stores / "pt"), "--recipe", "synthetic", "--out", str(stores / "capped"),
                 "--frames", "4", "--steps", "2", "--batch-size", "2", "--temporal-clips", str(clips),
                 "--val-every", "1", "--eval-batch-size", str(cap), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    val_videos = TokenStore.open(stores / "val").num_videos
    periodic = [r for r in read_metrics(stores / "capped") if r["split"] == "val"]
    assert periodic  # the periodic validations ran, and the final evaluation
    assert (stores / "capped" / "eval" / "results.json").is_file()
    assert max(forwards) == cap
    assert sum(forwards) == (len(periodic) + 1) * val_videos * clips  # every clip scored, in forwards of <= 2
    record = json.loads((stores / "capped" / "finetune.json").read_text())
    assert record["config"]["eval_batch_size"] == cap


def test_finetune_cli_stopped_by_its_time_limit_exits_3_and_says_how_to_continue(stores, capsys):
    command = ["finetune", "--train-store", str(stores / "train"), "--pretrained", str(stores / "pt"),
               "--out", str(stores / "limited"), "--frames", "4", "--steps", "2", "--batch-size", "2", "--no-progress"]
    assert main([*command, "--max-minutes", "0"]) == 3
    printed = capsys.readouterr()
    assert printed.out.startswith("time_limit after 1 steps")
    assert "continue with the same command and --resume" in printed.err
    assert main([*command, "--resume"]) == 0


def test_finetune_cli_learns_the_class_token(stores, capsys):
    tmp_path = stores
    code = main(["finetune", "--train-store", str(tmp_path / "train"), "--val-store", str(tmp_path / "val"),
                 "--from-scratch", "--preset", "tiny", "--recipe", "synthetic", "--out", str(tmp_path / "cli"),
                 "--frames", "4", "--steps", "80", "--batch-size", "8", "--lr", "3e-4", "--temporal-clips", "2",
                 "--val-every", "20", "--precision", "bf16", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "cli" / "finetune.json").read_text())
    assert record["resolved"]["steps"] == 80 and record["resolved"]["flip"] is False
    results = json.loads((tmp_path / "cli" / "eval" / "results.json").read_text())
    # The class is written into every frame: learnable in 80 steps. At lr 3e-3 only 3-4 of 10
    # (seed, thread count) runs learned it; at 3e-4 all 10 did.
    assert results["top1"] >= 0.8
    vals = [r for r in read_metrics(tmp_path / "cli") if r["split"] == "val"]
    assert vals and "top1" in vals[0]
    assert (tmp_path / "cli" / "model" / "config.json").is_file()


def test_a_fine_tuned_model_as_starting_point_gets_a_new_zero_head(tmp_path):
    from vimpac.model import VimpacForClassification

    torch.manual_seed(0)
    tuned = VimpacForClassification(tiny_model_config(), 5)
    torch.nn.init.normal_(tuned.head.cls_fc.weight)
    tuned.save_pretrained(tmp_path / "tuned")
    model = build_classifier(5, 4, GRID, CODEBOOK, pretrained=tmp_path / "tuned")
    assert not model.head.cls_fc.weight.any() and not model.head.cls_fc.bias.any()
    torch.testing.assert_close(model.backbone.embedding.weight, tuned.backbone.embedding.weight)


@pytest.mark.parametrize("changes, message", [
    (dict(grad_accum_steps=0), "--grad-accum: expected a positive integer, got 0"),
    (dict(steps=None, epochs=1.0, grad_accum_steps=0), "--grad-accum: expected a positive integer, got 0"),
    (dict(batch_size=0), "--batch-size: expected a positive integer, got 0"),
    (dict(layer_decay=0.0), r"--layer-decay: expected a factor in \(0, 1\]"),
    (dict(steps=None, epochs=float("inf")), "--epochs: expected a positive finite number, got inf"),
    (dict(lr=-1.0), "lr: expected a finite number >= 0"),
    (dict(log_every=0), "log_every: expected an integer >= 1"),
    (dict(precision="fp16"), "fp16 needs a CUDA device"),
    (dict(val_store=None, val_every=2), "--val-every 2: periodic validation needs --val-store"),
    (dict(eval_batch_size=0), "--eval-batch-size: expected a positive integer, got 0"),
])
def test_impossible_options_are_refused_before_anything_is_written(stores, changes, message):
    from vimpac.config import ConfigError

    with pytest.raises((FinetuneError, ConfigError), match=message):
        run_finetune(ft_config(stores, **changes))
    assert not (stores / "run").exists()


def test_a_validation_store_of_another_fps_is_refused_before_anything_is_written(stores):
    # A val store tokenized at 4 fps for a model trained on 2 fps clips: every evaluation clip of
    # T frames spanned half the time the model learned on, and the accuracy dropped silently.
    make_store(stores / "val4", num_videos=6, seed=2, fps=4.0)
    with pytest.raises(FinetuneError, match="val4: sampled at 4 fps, the training store at 2 fps"):
        run_finetune(ft_config(stores, val_store=str(stores / "val4")))
    assert not (stores / "run").exists()


def test_a_validation_store_with_other_class_names_is_refused_naming_the_label(stores):
    # Said only "VAL: class names differ from the training store's", not which label differs,
    # while `vimpac probe` named it: both now go through one check.
    meta = json.loads((stores / "val" / "store.json").read_text())
    meta["class_names"] = list(reversed(meta["class_names"]))
    (stores / "val" / "store.json").write_text(json.dumps(meta))
    with pytest.raises(FinetuneError) as refused:
        run_finetune(ft_config(stores))
    message = str(refused.value)
    assert f"training store {stores / 'train'} and the validation store {stores / 'val'} differ" in message
    assert f"label 0 is {meta['class_names'][-1]!r} in training, {meta['class_names'][0]!r} in validation" in message
    assert "tokenize --class-names" in message
    assert not (stores / "run").exists()


def test_resume_without_a_checkpoint_says_it_starts_anew_and_folders_of_pretraining_are_refused(stores, capsys):
    run_finetune(ft_config(stores, steps=1, resume=True))
    assert "--resume: no checkpoint in" in capsys.readouterr().err
    (stores / "pt_run").mkdir()
    (stores / "pt_run" / "pretrain.json").write_text("{}")
    with pytest.raises(CheckpointError, match="holds a pre-training run"):
        run_finetune(ft_config(stores, out=str(stores / "pt_run")))


def test_recipe_lr_follows_the_size_of_the_pretrained_model(tmp_path):
    # Table 4: lr 1e-4 for small / base, 5e-5 for large-half. The authors' final model is a
    # Large-Half; fine-tuning it with the default --preset used to give 1e-4.
    from vimpac.finetune.runner import resolve_settings
    from vimpac.model.config import MODEL_PRESETS
    from vimpac.model.pretrained import CONFIG_FILE

    VimpacForPretraining(tiny_model_config()).save_pretrained(tmp_path / "pt")
    config = json.loads((tmp_path / "pt" / CONFIG_FILE).read_text())
    for name in ("dim", "layers", "heads", "halve_att", "halve_mlp"):  # only config.json is read
        config["model"][name] = getattr(MODEL_PRESETS["large-half"], name)
    (tmp_path / "large" / "model").mkdir(parents=True)
    (tmp_path / "large" / "model" / CONFIG_FILE).write_text(json.dumps(config))

    def lr(**changes) -> float:
        cfg = FinetuneConfig(train_store="unused", out="unused", recipe="ucf101", **changes)
        return resolve_settings(cfg, num_videos=100)["lr"]

    assert lr(pretrained=str(tmp_path / "large")) == 5e-5  # a run folder's model/ too
    assert lr(pretrained=str(tmp_path / "large"), preset="small") == 5e-5
    assert lr(pretrained=str(tmp_path / "pt"), preset="large-half") == 1e-4
    assert lr(preset="large-half") == 5e-5 and lr(preset="small") == 1e-4  # from scratch
    assert lr(pretrained=str(tmp_path / "large"), lr=3e-4) == 3e-4


def test_cli_takes_deterministic_and_reports_divergence_in_one_line(stores, monkeypatch, capsys):
    from vimpac.cli import main
    from vimpac.engine.trainer import TrainingDiverged
    from vimpac.finetune import runner

    seen = {}

    def diverge(cfg):
        seen["deterministic"] = cfg.deterministic
        raise TrainingDiverged("5 consecutive steps (up to step 7) had a non-finite loss or gradient norm")

    monkeypatch.setattr(runner, "run_finetune", diverge)
    code = main(["finetune", "--train-store", str(stores / "train"), "--pretrained", str(stores / "pt"),
                 "--out", str(stores / "run"), "--deterministic", "--no-progress"])
    assert code == 4 and seen == {"deterministic": True}
    assert capsys.readouterr().err.strip() == \
        "vimpac finetune: error: 5 consecutive steps (up to step 7) had a non-finite loss or gradient norm"


def test_device_auto_is_resolved_and_batches_go_where_the_trainer_puts_the_model(stores, monkeypatch):
    # The task used to get --device as typed: "auto" crashed in torch.device("auto"), and under
    # torchrun a "cuda:0" sent every rank's batches to GPU 0 while the trainer put each rank's
    # model on its LOCAL_RANK GPU (and picked gloo instead of NCCL for "auto").
    from vimpac.engine import distributed
    from vimpac.engine.trainer import Trainer

    chosen = {}
    real_init = distributed.init_distributed

    def spy_init(device="cpu"):
        chosen["init"] = device
        return real_init(device)

    devices = {}
    real_trainer_init = Trainer.__init__

    def spy_trainer_init(self, model, task, cfg, *args, **kwargs):
        real_trainer_init(self, model, task, cfg, *args, **kwargs)
        devices["task"], devices["trainer"] = task.device, self.device

    monkeypatch.setattr(distributed, "init_distributed", spy_init)
    monkeypatch.setattr(Trainer, "__init__", spy_trainer_init)
    summary = run_finetune(ft_config(stores, device="auto", steps=1, val_every=1, temporal_clips=1))
    assert summary.status == "finished"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert chosen["init"] == expected
    assert devices["task"] == devices["trainer"] and devices["trainer"].type == expected


def test_resume_may_split_the_update_otherwise_but_not_change_it(stores):
    # A 2-process run resumed on one process takes --grad-accum 2; here one process, batch 4 -> 2 x 2.
    # Without dropout (its masks depend on the batch shape) the updates are the same up to rounding.
    full = run_finetune(ft_config(stores, out=str(stores / "full"), dropout=0.0))
    part = run_finetune(ft_config(stores, out=str(stores / "part"), max_minutes=0.0, dropout=0.0))
    assert part.status == "time_limit"
    with pytest.raises(CheckpointError, match="samples per update"):
        run_finetune(ft_config(stores, out=str(stores / "part"), resume=True, batch_size=2, dropout=0.0))
    resumed = run_finetune(ft_config(stores, out=str(stores / "part"), resume=True, batch_size=2,
                                     grad_accum_steps=2, dropout=0.0))
    assert resumed.status == "finished" and resumed.steps == full.steps
    for (step, loss), (step_full, loss_full) in zip(train_losses(stores / "part"), train_losses(stores / "full")):
        assert step == step_full and loss == pytest.approx(loss_full, rel=1e-5)
