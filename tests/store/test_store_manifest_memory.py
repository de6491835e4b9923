"""`store info`, `store verify` and a resumed `tokenize` hold the manifest as int64 columns: a
few arrays of 8 bytes a value at their peak, not a Python int per value (the list-based code
peaked at ~300 bytes an entry here; at 2.4M entries 517 MiB, 794 MiB and 1.2 GB of RSS,
docs/benchmarks.md)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from memory_helpers import traced_peak
from vimpac.data.annotations import VideoRecord
from vimpac.store.format import PART_DIR, SHARD_DIR, part_name
from vimpac.store.tokenize import tokenize_videos
from vimpac.store.verify import store_info, verify_store
from vimpac.video.views import resolve_views

from test_store_format import make_meta, new_store, write_manifest_as

VIDEOS = 5000
BIG_VIEWS = tuple(view.name for view in resolve_views("all12"))
BIG_META = make_meta(tokenizer_id="never-encodes", size=16, downsample=8, grid=(2, 2), views=BIG_VIEWS,
                     source=None, class_names=None)


def big_list() -> list[VideoRecord]:
    return [VideoRecord(f"{i:05d}.mp4", i % 400, f"videos/{i:05d}") for i in range(VIDEOS)]


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """A store of 5,000 videos x 12 views (sparse shard, right checksums): its compacted manifest.json
    (a columns file) and an unmerged part of a resumed run, a video whose file is missing."""
    root = new_store(tmp_path_factory.mktemp("big") / "store", BIG_META)
    entries, frames = VIDEOS * len(BIG_VIEWS), 3
    nbytes = frames * BIG_META.tokens_per_frame * 2
    (root / SHARD_DIR).mkdir()
    with open(root / SHARD_DIR / "r000-0000.tok", "wb") as f:
        f.truncate(entries * nbytes)
    write_manifest_as(root, {
        "shards": ["r000-0000.tok"],
        "videos": {"key": [r.key for r in big_list()[:-1]], "label": [r.label for r in big_list()[:-1]],
                   "record": list(range(VIDEOS - 1))},
        "entries": {"video": np.repeat(np.arange(VIDEOS - 1), len(BIG_VIEWS)).tolist(),
                    "view": np.tile(np.arange(len(BIG_VIEWS)), VIDEOS - 1).tolist(),
                    "frames": [frames] * (entries - len(BIG_VIEWS)), "shard": [0] * (entries - len(BIG_VIEWS)),
                    "offset": (np.arange(entries - len(BIG_VIEWS)) * nbytes).tolist(),
                    "crc32": [zlib.crc32(bytes(nbytes))] * (entries - len(BIG_VIEWS))},
        "failures": []}, "columns")
    (root / PART_DIR).mkdir()
    failure = {"record": VIDEOS - 1, "key": big_list()[-1].key, "path": big_list()[-1].path, "reason": "no file",
               "error": "not_found"}
    (root / PART_DIR / part_name(0, 0)).write_text(json.dumps({
        "shards": [], "videos": {"key": [], "label": [], "record": []},
        "entries": {name: [] for name in ("video", "view", "frames", "shard", "offset", "crc32")},
        "failures": [failure]}))
    return root, entries - len(BIG_VIEWS)


def resume(root: Path, records: list[VideoRecord]) -> None:
    """A rerun of `vimpac tokenize` that retries the missing video: it reads what is committed,
    checks it against the list, takes the rank's shards (reading the manifest again), commits the
    failure and merges the manifest."""
    tokenizer = SimpleNamespace(tokenizer_id=BIG_META.tokenizer_id, kind=BIG_META.tokenizer_kind,
                                codebook_size=BIG_META.codebook_size, downsample=BIG_META.downsample)
    report = tokenize_videos(records, root.parent, tokenizer, fps=BIG_META.fps, size=BIG_META.size, views="all12",
                             out_dir=root, workers=0, progress=False, retry_failed=True)
    assert [f["error"] for f in report.failures] == ["not_found"] and report.already_done == VIDEOS - 1


# Bytes per entry beyond its int64 columns (6 values: 48 bytes, what an open store reads too): a
# few temporary arrays of 8 bytes a value. The list-based code built a Python int per value
# (~36 bytes each, 6 an entry) and merging parts a tuple per entry besides: ~300 bytes an entry.
WORK = 64


@pytest.mark.parametrize("what", ["info", "verify", "resume"])
def test_info_verify_and_a_resume_hold_arrays_not_python_ints(big_store, what):
    root, entries = big_store
    records = big_list()
    call = {"info": lambda: store_info(root), "verify": lambda: verify_store(root),
            "resume": lambda: resume(root, records)}[what]
    result, peak = traced_peak(call)
    if what == "verify":
        assert result.ok and result.entries == entries, result.problems[:3]
    assert peak / entries < 48 + WORK, f"{what}: {peak / entries:.0f} bytes per entry"


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures the RSS high-water mark (Linux)")
def test_reading_the_columns_file_maps_one_column_at_a_time(tmp_path):
    """The mapped file's pages a tensor is copied from stay resident while the file is open: read
    through one mapping, reading the columns peaked at the arrays plus the whole file (`store info`
    of 2.4M entries, 110 MiB of arrays: 246 MiB of RSS). Measured in a fresh process: RSS, not
    tracemalloc, sees mapped pages."""
    import os
    import subprocess
    import sys

    from vimpac.store.format import MANIFEST_FILE, Manifest, ManifestColumns, write_manifest

    entries = 1_000_000
    column = np.arange(entries, dtype=np.int64) * 2
    write_manifest(tmp_path, ManifestColumns(
        shards=["r000-0000.tok"], video_key=["video"], video_label=np.zeros(1, np.int64),
        video_record=np.zeros(1, np.int64), failures=[],
        **{f"entry_{name}": np.zeros(entries, np.int64) if name in ("video", "shard") else column
           for name in Manifest.ENTRY_COLUMNS}))
    script = f"""
import gc
from pathlib import Path
from vimpac.store.format import read_manifest_columns

def mib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":")) / 1024

gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
before = mib("VmRSS")
columns = read_manifest_columns(Path({str(tmp_path / MANIFEST_FILE)!r}))
print(mib("VmHWM") - before, mib("VmRSS") - before)
"""
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    peak, held = (float(value) for value in done.stdout.split())
    column = entries * 8 / 2**20
    assert held >= 6 * column  # the arrays are read
    # Beyond what it keeps, reading needs about one column: its mapped pages, or the checks'
    # temporaries (through one mapping: all six columns' pages).
    assert peak - held < 2 * column, f"peak {peak:.0f} MiB, {held:.0f} MiB kept; a column is {column:.0f} MiB"
