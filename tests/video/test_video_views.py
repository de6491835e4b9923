"""The paper's spatial views: crop geometry, flips, sizes, view sets."""

from __future__ import annotations

import numpy as np
import pytest

from vimpac.video.views import (
    ViewSpec,
    crop_box,
    make_view,
    make_views,
    make_views_of_chunks,
    resize_frames,
    resized_shape,
    resolve_views,
    view_set,
)


def coordinate_frames(count: int, height: int, width: int) -> np.ndarray:
    """Pixel (t, y, x) = (y, x, t): every pixel says where it came from."""
    t, y, x = np.meshgrid(np.arange(count), np.arange(height), np.arange(width), indexing="ij")
    return np.stack([y, x, t], axis=-1).astype(np.uint8)


def test_view_names_are_stable():
    assert ViewSpec(1.0, "center", False).name == "s1.00_center"
    assert ViewSpec(1.25, "top_left", True).name == "s1.25_top_left_flip"
    assert ViewSpec(1.25, "bottom_right").name == "s1.25_bottom_right"
    for view in view_set("all12"):
        assert ViewSpec.from_name(view.name) == view


def test_view_sets():
    assert view_set("center") == (ViewSpec(1.0, "center", False),)
    all12 = view_set("all12")
    assert len(all12) == 12 and len({v.name for v in all12}) == 12
    assert {v.scale for v in all12} == {1.0, 1.25}
    assert {v.crop for v in all12} == {"top_left", "center", "bottom_right"}
    assert sum(v.flip for v in all12) == 6
    noflip6 = view_set("noflip6")
    assert len(noflip6) == 6 and not any(v.flip for v in noflip6)
    assert {v.scale for v in view_set("all12", large_scale=1.5)} == {1.0, 1.5}  # the paper's text


def test_resolve_views():
    assert resolve_views("all12") == view_set("all12")
    assert resolve_views("s1.00_center,s1.25_top_left_flip") == (
        ViewSpec(1.0, "center"), ViewSpec(1.25, "top_left", True))
    assert resolve_views([ViewSpec(1.0, "center")]) == (ViewSpec(1.0, "center"),)
    with pytest.raises(ValueError, match="view set"):
        resolve_views("bogus")
    with pytest.raises(ValueError, match="duplicate"):
        resolve_views("s1.00_center,s1.00_center")
    with pytest.raises(ValueError, match="crop"):
        ViewSpec(1.0, "middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale"):
        ViewSpec(0.5, "center")


def test_geometry_matches_the_authors_formula():
    # 720p to S = 128 at 1.25x: shorter side int(1.25 * 128) = 160, longer int(1280 * 160 / 720) = 284;
    # crop offsets int(k * (284 - 128) / 2) for k = 0, 1, 2 -> 0, 78, 156 (and 0, 16, 32 vertically).
    assert resized_shape(720, 1280, 128, 1.25) == (160, 284)
    assert resized_shape(1280, 720, 128, 1.25) == (284, 160)  # portrait
    assert resized_shape(720, 1280, 128, 1.0) == (128, 227)
    assert [crop_box(160, 284, 128, c) for c in ("top_left", "center", "bottom_right")] == [
        (0, 0), (16, 78), (32, 156)]
    assert crop_box(128, 227, 128, "center") == (0, 49)  # int(99 / 2)


def test_exact_crops_and_flip_on_coordinate_frames():
    # The shorter side already equals S at scale 1: no resampling, so pixels show the exact crop.
    frames = coordinate_frames(3, 48, 64)
    views = make_views(frames, 48, [ViewSpec(1.0, c, f) for c in ("top_left", "center", "bottom_right") for f in (False, True)])
    for crop, left in (("top_left", 0), ("center", 8), ("bottom_right", 16)):
        plain = views[f"s1.00_{crop}"]
        assert plain.shape == (3, 48, 48, 3) and plain.dtype == np.uint8
        np.testing.assert_array_equal(plain[..., 0], np.broadcast_to(np.arange(48)[None, :, None], (3, 48, 48)))
        np.testing.assert_array_equal(plain[..., 1], np.broadcast_to(left + np.arange(48)[None, None, :], (3, 48, 48)))
        np.testing.assert_array_equal(plain[..., 2], np.broadcast_to(np.arange(3)[:, None, None], (3, 48, 48)))
        flipped = views[f"s1.00_{crop}_flip"]  # the crop, mirrored
        np.testing.assert_array_equal(flipped[..., 1], np.broadcast_to(left + np.arange(47, -1, -1)[None, None, :], (3, 48, 48)))
    # portrait: crops move vertically
    tall = make_views(coordinate_frames(1, 64, 48), 48, "noflip6")
    for crop, top in (("top_left", 0), ("center", 8), ("bottom_right", 16)):
        np.testing.assert_array_equal(tall[f"s1.00_{crop}"][0, :, 0, 0], top + np.arange(48))


def test_scaled_crops_land_where_the_geometry_says():
    # A smooth ramp survives bilinear resizing almost unchanged in the interior, so the crop's
    # centre pixel tells which part of the resized frame it came from.
    height, width, size = 96, 192, 32
    ramp_x = np.broadcast_to(np.linspace(0, 255, width)[None, None, :, None], (1, height, width, 3))
    frames = np.ascontiguousarray(ramp_x).round().astype(np.uint8)
    rh, rw = resized_shape(height, width, size, 1.25)
    assert (rh, rw) == (40, 80)
    for crop in ("top_left", "center", "bottom_right"):
        view = make_view(frames, size, ViewSpec(1.25, crop))
        assert view.shape == (1, size, size, 3)
        _, left = crop_box(rh, rw, size, crop)
        centre_x = left + size // 2
        expected = 255 * ((centre_x + 0.5) * width / rw - 0.5) / (width - 1)  # resized pixel centre
        assert abs(int(view[0, size // 2, size // 2, 0]) - expected) <= 2


def test_all12_views_are_distinct_and_right_sized():
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 60, 80, 3), dtype=np.uint8)
    views = make_views(frames, 32, "all12")
    assert list(views) == [v.name for v in view_set("all12")]
    arrays = list(views.values())
    assert all(a.shape == (2, 32, 32, 3) and a.dtype == np.uint8 for a in arrays)
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            assert not np.array_equal(arrays[i], arrays[j])
    for view in view_set("all12"):
        if view.flip:
            unflipped = views[view.name.removesuffix("_flip")]
            np.testing.assert_array_equal(views[view.name], unflipped[:, :, ::-1])


def test_resize_is_antialiased_and_keeps_flat_colours():
    flat = np.full((2, 50, 70, 3), 173, dtype=np.uint8)
    assert (resize_frames(flat, 20, 28) == 173).all()
    checker = ((np.indices((64, 64)).sum(axis=0) % 2) * 255).astype(np.uint8)
    frames = np.repeat(checker[None, :, :, None], 3, axis=-1)
    small = resize_frames(frames, 16, 16)
    # antialiasing averages the 1-pixel checkerboard to grey; plain bilinear would alias
    assert np.abs(small[:, 2:-2, 2:-2].astype(int) - 128).max() <= 2


def test_resize_matches_a_float_antialiased_resize_within_one_level():
    """The uint8 kernel against the textbook route (float32 copy, resize, round), down and up."""
    import torch
    import torch.nn.functional as F

    frames = np.random.default_rng(0).integers(0, 256, (3, 45, 80, 3), dtype=np.uint8)
    for height, width in ((18, 32), (90, 160), (45, 33)):
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        expected = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        got = resize_frames(frames, height, width)
        assert got.shape == expected.shape and got.dtype == np.uint8
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_bad_frames_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        make_views(np.zeros((2, 8, 8, 3), np.float32), 8, "center")
    with pytest.raises(ValueError, match="size"):
        make_views(np.zeros((2, 8, 8, 3), np.uint8), 0, "center")
    with pytest.raises(ValueError, match="cannot crop"):
        crop_box(10, 20, 16, "center")


@pytest.mark.parametrize("chunk", [1, 7, 16, 70, 100])  # dividing the 70 frames or not, > the resize batch
def test_views_of_chunks_equal_the_views_of_all_frames(chunk):
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, size=(70, 36, 50, 3), dtype=np.uint8)
    expected = make_views(frames, 24, "all12")
    chunks = (frames[start : start + chunk] for start in range(0, len(frames), chunk))
    got = make_views_of_chunks(chunks, len(frames), 24, "all12")
    assert list(got) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


def test_views_of_chunks_check_the_announced_count():
    frames = np.zeros((6, 16, 16, 3), np.uint8)
    assert make_views_of_chunks(iter(()), 0, 8, "center")["s1.00_center"].shape == (0, 8, 8, 3)
    with pytest.raises(ValueError, match="6 frames, 7 were announced"):
        make_views_of_chunks([frames[:3], frames[3:]], 7, 8, "center")
    with pytest.raises(ValueError, match="more than the 5 frames"):
        make_views_of_chunks([frames[:3], frames[3:]], 5, 8, "center")
