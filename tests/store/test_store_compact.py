"""`vimpac store compact`: merging the manifest parts of ranks that ran as separate jobs."""

from __future__ import annotations

import fcntl
import os
import threading

import numpy as np

from vimpac.cli import main
from vimpac.store import TokenStore
from vimpac.store.format import MANIFEST_FILE, PART_DIR, SHARD_DIR, load_manifest
from vimpac.store.verify import verify_store
from vimpac.store.writer import COMPACT_LOCK, RankWriter, compact_store

from test_store_format import make_meta, new_store, random_video, write_videos


def store_of_two_rank_jobs(tmp_path):
    """Ranks 0 and 1 run as separate jobs (no torch.distributed): nobody merges their parts."""
    rng = np.random.default_rng(7)
    videos = [random_video(rng, i, frames=2) for i in range(6)]
    root = new_store(tmp_path / "store")
    write_videos(root, videos[1::2], rank=1, per_commit=1)
    write_videos(root, videos[0::2], rank=0, per_commit=2)
    return root, videos


def test_compact_merges_the_parts_into_the_manifest(tmp_path, capsys):
    root, videos = store_of_two_rank_jobs(tmp_path)
    parts = sorted((root / PART_DIR).glob("*.json"))
    assert len(parts) == 5 and not (root / MANIFEST_FILE).exists()

    assert main(["store", "compact", str(root)]) == 0
    assert capsys.readouterr().out.strip() == (f"{root}: merged 5 manifest part(s) into {MANIFEST_FILE}; "
                                               "6 videos, 12 entries, 0 failed")
    assert not list((root / PART_DIR).glob("*.json")) and (root / MANIFEST_FILE).exists()
    assert TokenStore.open(root).keys() == [v.key for v in videos]
    assert verify_store(root).ok

    assert main(["store", "compact", str(root)]) == 0
    assert "nothing to merge" in capsys.readouterr().out


def test_compact_is_refused_while_a_run_writes_a_rank(tmp_path, capsys):
    root, videos = store_of_two_rank_jobs(tmp_path)
    parts = sorted((root / PART_DIR).glob("*.json"))
    committed, _ = load_manifest(root)
    with RankWriter(root, make_meta(), 1, committed):
        assert main(["store", "compact", str(root)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert err.startswith(f"vimpac store compact: error: {root / SHARD_DIR / 'r001.lock'}: a run is writing rank 1")
        assert sorted((root / PART_DIR).glob("*.json")) == parts and not (root / MANIFEST_FILE).exists()
    assert main(["store", "compact", str(root)]) == 0


def test_compact_of_a_folder_that_is_not_a_store_is_one_line(tmp_path, capsys):
    assert main(["store", "compact", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a token store" in err


def test_compactions_take_turns(tmp_path):
    """Two at once (a run's rank 0 finishing, and `vimpac store compact`) could both read
    manifest.json; the one that wrote it last dropped the parts the other had merged and deleted."""
    root, _videos = store_of_two_rank_jobs(tmp_path)
    fd = os.open(root / SHARD_DIR / COMPACT_LOCK, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        other = threading.Thread(target=compact_store, args=(root,))
        other.start()
        other.join(timeout=0.5)
        assert other.is_alive() and not (root / MANIFEST_FILE).exists()
    finally:
        os.close(fd)
    other.join(timeout=30)
    assert not other.is_alive() and (root / MANIFEST_FILE).exists()
    assert not list((root / PART_DIR).glob("*.json"))
