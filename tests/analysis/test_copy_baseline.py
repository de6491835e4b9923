"""The Figure 4 experiment on token stores: the paper's ordering, the report, the PNG grids, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from vimpac.analysis.copy_baseline import CopyBaselineConfig, load_clips, run_copy_baseline
from vimpac.analysis.copy_fill import NEIGHBOURHOODS
from vimpac.analysis.errors import AnalysisError
from vimpac.analysis.images import compose_grid
from vimpac.cli import main
from vimpac.pretrain.masking import induced_masking_ratio
from vimpac.store.reader import TokenStore

sys.path.insert(0, str(Path(__file__).parent))
from analysis_helpers import smooth_token_videos, tiny_vqvae, write_token_store  # noqa: E402

CODES = 16


@pytest.fixture(scope="module")
def smooth_store(tmp_path_factory):
    videos = smooth_token_videos(12, frames=8, grid=16, codebook_size=CODES, patch=3, seed=1)
    return write_token_store(tmp_path_factory.mktemp("smooth") / "store", videos, CODES)


def test_iid_masks_are_easier_to_copy_than_block_masks(smooth_store):
    config = CopyBaselineConfig(ratios=(0.15, 0.45), videos=12, frames=5, seed=0)
    result = run_copy_baseline(load_clips(TokenStore.open(smooth_store), 5, 12, 0), config)
    by_setting = {(s.strategy, s.target_ratio): s for s in result.settings}
    assert len(by_setting) == 4
    for ratio in config.ratios:
        block, iid = by_setting[("block", ratio)], by_setting[("iid", ratio)]
        # The block count is the one whose exact expected ratio is closest to the target.
        counts = range(1, 40)
        closest = min(counts, key=lambda n: abs(induced_masking_ratio(5, 16, 16, n) - ratio))
        assert block.num_blocks == closest
        assert abs(block.expected_ratio - ratio) < 0.03
        for neighbourhood in NEIGHBOURHOODS:
            # The paper's point (App. H.2): i.i.d. masks leave a visible neighbour next to almost
            # every masked token, block masks do not. (Measured here: 5 to 27 points apart.)
            assert iid.accuracy(neighbourhood) > block.accuracy(neighbourhood) + 0.03, (ratio, neighbourhood)
    table = result.format_table()
    assert "block" in table and "iid" in table and "spatio-temporal" in table
    report = result.to_json()
    assert report["clips"] == 12 and len(report["settings"]) == 4
    json.dumps(report)  # JSON-able


def test_clips_skip_short_videos_and_respect_the_count(tmp_path):
    videos = smooth_token_videos(3, frames=6, grid=8, codebook_size=CODES) + \
        smooth_token_videos(2, frames=3, grid=8, codebook_size=CODES)
    store = TokenStore.open(write_token_store(tmp_path / "store", videos, CODES))
    clips = load_clips(store, frames=5, videos=10, seed=0)
    assert clips.tokens.shape == (3, 5, 8, 8) and clips.skipped_short == 2
    for key, start, clip in zip(clips.keys, clips.starts, clips.tokens):
        index = int(key.split("_")[1])
        assert np.array_equal(clip.numpy(), videos[index][start:start + 5])
    with pytest.raises(AnalysisError, match="frames"):
        load_clips(store, frames=7, videos=2)


@pytest.fixture(scope="module")
def tokenizer_and_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("with_tokenizer")
    tokenizer = tiny_vqvae(CODES)
    tokenizer.save_pretrained(root / "tokenizer")
    videos = smooth_token_videos(3, frames=5, grid=4, codebook_size=CODES, patch=2)
    store = write_token_store(root / "store", videos, CODES, tokenizer_id=tokenizer.tokenizer_id)
    return root, tokenizer, store


def test_cli_writes_report_and_one_png_per_setting(tokenizer_and_store, capsys):
    root, tokenizer, store = tokenizer_and_store
    out = root / "out"
    code = main(["analyze", "copy-baseline", "--store", str(store), "--tokenizer", str(root / "tokenizer"),
                 "--out", str(out), "--ratios", "0.3,0.5", "--videos", "3", "--frames", "4"])
    assert code == 0
    assert "acc spatio-temporal" in capsys.readouterr().out
    report = json.loads((out / "copy_baseline.json").read_text())
    assert sorted(report["pictures"]) == ["block_30", "block_50", "iid_30", "iid_50"]
    # The same seed gives the same clips and masks as the command used.
    config = CopyBaselineConfig(ratios=(0.3, 0.5), videos=3, frames=4, seed=0)
    result = run_copy_baseline(load_clips(TokenStore.open(store), 4, 3, 0), config)
    for setting in result.settings:
        image = (imread(out / f"copy_{setting.name}.png")[..., :3] * 255).round().astype(np.uint8)
        # Rows: original, masked, copy spatial, copy spatio-temporal; 4 frames of 32 x 32 pixels.
        _, layout = compose_grid([np.zeros((4, 32, 32, 3), np.uint8)] * 4)
        left = image.shape[1] - layout.shape[1]  # the label margin (its width depends on the text)
        assert image.shape[0] == layout.shape[0] and left > 0

        def row(r):
            boxes = [layout.cell_box(r, c) for c in range(4)]
            return np.stack([image[y0:y1, left + x0:left + x1] for y0, x0, y1, x1 in boxes])

        original, masked = row(0), row(1)
        assert original.std() > 1.0  # decoded content, not a blank canvas
        assert np.array_equal(original, tokenizer.decode(result.clips.tokens[0]).numpy())
        changed = (masked != original).any(-1)  # (T, 32, 32): pixels the highlight altered
        token_changed = changed.reshape(4, 4, 8, 4, 8).all(axis=(2, 4))
        assert np.array_equal(token_changed, setting.mask[0].numpy())  # masked cells exactly where the mask is
        assert not (changed.reshape(4, 4, 8, 4, 8).any(axis=(2, 4)) & ~setting.mask[0].numpy()).any()
        tinted = masked[changed].astype(int)
        assert (tinted[:, 0] >= 150).all() and (tinted[:, 1] <= 105).all() and (tinted[:, 2] <= 105).all()
        for r, neighbourhood in ((2, "spatial"), (3, "spatiotemporal")):
            filled = setting.filled[neighbourhood][0]
            if (filled >= 0).all():  # gray cells (nothing to copy) are checked in the unit tests
                assert np.array_equal(row(r), tokenizer.decode(filled).numpy())


def test_cli_refuses_a_store_made_by_another_tokenizer(tokenizer_and_store, tmp_path, capsys):
    root, _, _ = tokenizer_and_store
    other = write_token_store(tmp_path / "other", smooth_token_videos(1, 5, 4, CODES), CODES, tokenizer_id="vqvae-0000")
    code = main(["analyze", "copy-baseline", "--store", str(other), "--tokenizer", str(root / "tokenizer"),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "tokenizer_id" in capsys.readouterr().err


def test_close_ratios_get_distinct_pictures_and_report_keys(tokenizer_and_store, capsys, monkeypatch):
    # 0.15 and 0.151 both used to be named "*_15": one picture overwrote the other; then their
    # pictures' labels both still said "15% masked".
    import vimpac.analysis.copy_baseline as copy_baseline

    labels = []
    real_grid = copy_baseline.compose_grid

    def grid_keeping_labels(rows, row_labels, *args, **kwargs):
        labels.extend(row_labels)
        return real_grid(rows, row_labels, *args, **kwargs)

    monkeypatch.setattr(copy_baseline, "compose_grid", grid_keeping_labels)
    root, _, store = tokenizer_and_store
    out = root / "out_close_ratios"
    code = main(["analyze", "copy-baseline", "--store", str(store), "--tokenizer", str(root / "tokenizer"),
                 "--out", str(out), "--ratios", "0.15,0.151", "--videos", "2", "--frames", "4"])
    assert code == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    assert "15.1%" in table  # the table tells the two settings apart too
    report = json.loads((out / "copy_baseline.json").read_text())
    assert sorted(report["pictures"]) == ["block_15", "block_15.1", "iid_15", "iid_15.1"]
    assert sorted(p.name for p in out.glob("copy_*.png")) == [
        "copy_block_15.1.png", "copy_block_15.png", "copy_iid_15.1.png", "copy_iid_15.png"]
    masked = sorted({label for label in labels if label.endswith("masked")})
    assert masked == ["block 15% masked", "block 15.1% masked", "iid 15% masked", "iid 15.1% masked"]


def test_ratios_that_would_share_a_name_are_refused(capsys):
    with pytest.raises(AnalysisError, match=r"0\.15 and 0\.1500001 both name the setting <strategy>_15"):
        CopyBaselineConfig(ratios=(0.15, 0.1500001))
    with pytest.raises(SystemExit) as info:
        main(["analyze", "copy-baseline", "--store", "s", "--ratios", "0.3,0.15,0.3"])
    assert info.value.code == 2
    assert "argument --ratios: 0.3 given more than once" in capsys.readouterr().err
