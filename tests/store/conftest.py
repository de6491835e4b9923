"""Fixtures shared by the token store tests."""

from __future__ import annotations

import numpy as np
import pytest

from test_store_format import new_store, random_video, write_videos


@pytest.fixture
def store_with_videos(tmp_path):
    rng = np.random.default_rng(0)
    videos = [random_video(rng, i, frames=1 + i % 5) for i in range(7)]
    root = new_store(tmp_path / "store")
    write_videos(root, videos)
    return root, videos
