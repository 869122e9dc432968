"""Clip transforms: flip consistency across frames and views, caption swap, photometric draws, eval determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mpgsam2.data import ClipTransform, caption_flip
from mpgsam2.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipAugmentation,
    PhotometricParams,
    photometric_distort,
    resize_masks,
    sample_photometric,
)


def asymmetric_clip(t: int = 3, h: int = 48, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Frames whose left part is bright (a bar whose width differs per frame) and right part dark; masks = bar."""
    frames = np.full((t, h, w, 3), 20, dtype=np.uint8)
    masks = np.zeros((t, h, w), dtype=bool)
    for i in range(t):
        frames[i, :, : 16 + 4 * i] = (250, 200, 120)
        frames[i, : h // 4, :, 2] = 90  # a top band, so the image is not vertically symmetric either
        masks[i, :, : 16 + 4 * i] = True
    return frames, masks


def denormalize(view: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (view * std + mean) * 255.0


@pytest.mark.parametrize(
    ("caption", "flipped"),
    [
        ("the dog on the left", "the dog on the right"),
        ("Right man next to the LEFT car", "Left man next to the RIGHT car"),
        ("leftmost zebra, rightmost horse", "rightmost zebra, leftmost horse"),
        ("a right-hand glove", "a left-hand glove"),
        ("a bright light, upright pole, leftover food", "a bright light, upright pole, leftover food"),
        ("left, right.", "right, left."),
        ("no direction here", "no direction here"),
    ],
)
def test_caption_flip_swaps_whole_words(caption: str, flipped: str) -> None:
    assert caption_flip(caption) == flipped
    assert caption_flip(caption_flip(caption)) == caption


def test_eval_transform_resizes_and_normalises() -> None:
    frames = np.empty((2, 30, 50, 3), dtype=np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 255, 128, 0
    masks = np.zeros((2, 30, 50), dtype=bool)
    masks[:, :15] = True
    tf = ClipTransform(sam_size=32, beit_size=16, train=False)
    sam, beit, out_masks, caption = tf(frames, masks, "The LEFT one")
    assert sam.shape == (2, 3, 32, 32) and sam.dtype == torch.float32
    assert beit.shape == (2, 3, 16, 16) and beit.dtype == torch.float32
    assert out_masks.shape == (2, 32, 32) and out_masks.dtype == torch.float32
    assert caption == "The LEFT one"  # no flip, no lower-casing here
    expected = (torch.tensor([255.0, 128.0, 0.0]) / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD
    )
    torch.testing.assert_close(sam[0, :, 5, 5], expected)
    torch.testing.assert_close(beit[1, :, 9, 3], expected)
    assert set(out_masks.unique().tolist()) == {0.0, 1.0}
    assert out_masks[:, :16].all() and not out_masks[:, 16:].any()  # nearest: rows 0..14 of 30 -> 0..15 of 32


def test_eval_transform_is_deterministic_and_uses_no_global_rng() -> None:
    frames, masks = asymmetric_clip()
    tf = ClipTransform(sam_size=24, beit_size=12, train=False)
    np.random.seed(3)
    state = np.random.get_state()[1].copy()
    a = tf(frames, masks, "left")
    b = tf(frames, masks, "left")
    assert np.array_equal(np.random.get_state()[1], state)
    for x, y in zip(a[:3], b[:3]):
        assert torch.equal(x, y)
    assert a[3] == "left"
    assert tf(frames, None, "x")[2] is None


def test_flip_is_identical_for_every_frame_and_both_views() -> None:
    frames, masks = asymmetric_clip()
    train = ClipTransform(sam_size=32, beit_size=16, train=True, hflip_p=1.0, photometric=False)
    ref = ClipTransform(sam_size=32, beit_size=16, train=False)
    sam, beit, out_masks, caption = train(frames, masks, "the bar on the left", rng=0)
    sam_ref, beit_ref, masks_ref, _ = ref(np.ascontiguousarray(frames[:, :, ::-1]), masks[:, :, ::-1], "")
    assert caption == "the bar on the right"
    assert torch.equal(sam, sam_ref) and torch.equal(beit, beit_ref) and torch.equal(out_masks, masks_ref)
    # The bright bar is now on the right in every frame of both views, and the masks follow it.
    for view in (sam, beit):
        rgb = denormalize(view)
        assert (rgb[:, 0, :, -1] > 200).all() and (rgb[:, 0, :, 0] < 60).all()
    assert out_masks[:, :, -1].all() and not out_masks[:, :, 0].any()
    # The BEiT view is the SAM view's content at another resolution.
    pooled = F.adaptive_avg_pool2d(denormalize(sam), 16)
    assert (pooled - denormalize(beit)).abs().mean() < 4.0


def test_no_augmentation_equals_eval() -> None:
    frames, masks = asymmetric_clip()
    train = ClipTransform(sam_size=20, beit_size=10, train=True, hflip_p=0.0, photometric=False)
    ref = ClipTransform(sam_size=20, beit_size=10, train=False)
    for x, y in zip(train(frames, masks, "a", rng=1)[:3], ref(frames, masks, "a")[:3]):
        assert torch.equal(x, y)


def test_train_transform_applies_one_draw_to_every_frame_and_both_views() -> None:
    frame, _ = asymmetric_clip(1)
    frames = np.repeat(frame, 4, axis=0)  # 4 identical frames
    tf = ClipTransform(sam_size=16, beit_size=8, train=True)
    ref = ClipTransform(sam_size=16, beit_size=8, train=False)
    changed = 0
    for seed in range(12):
        sam, beit, _, _ = tf(frames, None, "left", rng=seed)
        assert all(torch.equal(sam[0], sam[i]) and torch.equal(beit[0], beit[i]) for i in range(1, 4))
        # Both views come from the same augmented frames: replay the draw and compare with the eval views.
        aug = tf.sample(np.random.default_rng(seed))
        augmented = frames[:, :, ::-1] if aug.hflip else frames
        augmented = photometric_distort(np.ascontiguousarray(augmented), aug.photometric)
        sam_ref, beit_ref, _, _ = ref(augmented, None, "")
        assert torch.equal(sam, sam_ref) and torch.equal(beit, beit_ref)
        changed += not torch.equal(sam, ref(frames, None, "")[0])
    assert changed >= 6  # augmentation does happen


def test_train_transform_is_reproducible_from_a_seed() -> None:
    frames, masks = asymmetric_clip()
    tf = ClipTransform(sam_size=16, beit_size=8, train=True)
    a = tf(frames, masks, "the left bar", rng=123)
    b = tf(frames, masks, "the left bar", rng=np.random.default_rng(123))
    assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3])) and a[3] == b[3]
    np.random.seed(5)
    c = tf(frames, masks, "the left bar")
    np.random.seed(5)
    d = tf(frames, masks, "the left bar")
    assert all(torch.equal(x, y) for x, y in zip(c[:3], d[:3]))
    captions = {tf(frames, masks, "the left bar", rng=s)[3] for s in range(20)}
    assert captions == {"the left bar", "the right bar"}


def test_photometric_clips_instead_of_wrapping() -> None:
    frames = np.array([[[[250, 10, 128]]]], dtype=np.uint8)
    up = photometric_distort(frames, PhotometricParams(brightness=32.0))
    down = photometric_distort(frames, PhotometricParams(brightness=-32.0))
    assert up[0, 0, 0].tolist() == [255, 42, 160]
    assert down[0, 0, 0].tolist() == [218, 0, 96]
    high = photometric_distort(frames, PhotometricParams(contrast=1.5))
    assert high[0, 0, 0].tolist() == [255, 15, 192]


def test_photometric_hsv_steps() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    same = photometric_distort(frames, PhotometricParams(saturation=1.0, hue=0.0))
    assert np.abs(same.astype(int) - frames).max() <= 1  # the HSV round trip is the identity
    red = np.array([[[[255, 0, 0], [0, 0, 255]]]], dtype=np.uint8)
    rotated = photometric_distort(red, PhotometricParams(hue=120.0))
    assert rotated[0, 0].tolist() == [[0, 255, 0], [255, 0, 0]]  # red -> green, blue -> red
    grey = photometric_distort(
        np.array([[[[200, 100, 50]]]], dtype=np.uint8), PhotometricParams(saturation=0.0)
    )
    assert grey[0, 0, 0].tolist() == [200, 200, 200]
    perm = photometric_distort(frames, PhotometricParams(channel_perm=(2, 0, 1)))
    assert np.array_equal(perm, frames[..., [2, 0, 1]])


def test_photometric_contrast_before_or_after_hsv() -> None:
    frames = np.array([[[[200, 100, 50]]]], dtype=np.uint8)
    first = photometric_distort(frames, PhotometricParams(contrast=1.4, contrast_first=True, saturation=0.5))
    after = photometric_distort(frames, PhotometricParams(contrast=1.4, contrast_first=False, saturation=0.5))
    # Contrast first saturates the red channel at 255 before desaturation; after, the desaturated colour scales.
    assert first[0, 0, 0].tolist() != after[0, 0, 0].tolist()
    assert after[0, 0, 0].tolist() == [255, 210, 175]  # (200, 150, 125) * 1.4, clipped


def test_sample_photometric_ranges_and_rates() -> None:
    rng = np.random.default_rng(0)
    draws = [sample_photometric(rng) for _ in range(2000)]
    for name, lo, hi in [
        ("brightness", -32, 32),
        ("contrast", 0.5, 1.5),
        ("saturation", 0.5, 1.5),
        ("hue", -18, 18),
    ]:
        values = [getattr(d, name) for d in draws if getattr(d, name) is not None]
        assert 900 < len(values) < 1100, name
        assert lo <= min(values) and max(values) <= hi, name
    assert 900 < sum(d.channel_perm is not None for d in draws) < 1100
    assert 900 < sum(d.contrast_first for d in draws) < 1100
    assert len({d.channel_perm for d in draws}) == 7  # six permutations and None


def test_resize_masks_is_nearest_then_binary() -> None:
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 1, 2] = True
    out = resize_masks(masks, 8)
    assert out.dtype == torch.float32 and out.shape == (1, 8, 8)
    assert out[0, 2:4, 4:6].all() and out.sum() == 4


def test_transform_rejects_bad_inputs() -> None:
    tf = ClipTransform(sam_size=8, beit_size=4, train=False)
    with pytest.raises(ValueError, match="uint8"):
        tf(np.zeros((1, 4, 4, 3), dtype=np.float32), None, "")
    with pytest.raises(ValueError, match="masks"):
        tf(np.zeros((1, 4, 4, 3), dtype=np.uint8), np.zeros((2, 4, 4), dtype=bool), "")
    with pytest.raises(ValueError, match="hflip_p"):
        ClipTransform(sam_size=8, beit_size=4, train=True, hflip_p=2.0)
    assert tf.apply(np.zeros((1, 4, 4, 3), dtype=np.uint8), None, "x", ClipAugmentation())[3] == "x"


def test_held_views_are_the_evaluation_views_at_a_quarter_of_the_memory():
    from mpgsam2.data.transforms import NormalizedFrames

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 30, 50, 3), dtype=np.uint8)
    transform = ClipTransform(64, 32, train=False)
    sam, beit, _, _ = transform(frames, None, "a cat")
    held_sam, held_beit = transform.held_views(frames)
    assert isinstance(held_sam, NormalizedFrames) and len(held_sam) == 3
    for t in range(3):
        assert torch.equal(held_sam[t], sam[t]) and torch.equal(held_beit[t], beit[t])  # bit for bit
    assert torch.equal(held_sam[1:3], sam[1:3]) and torch.equal(held_sam.to("cpu")[0], sam[0])
    assert held_sam.resized.nbytes * 4 == sam.nbytes
    with pytest.raises(ValueError, match="train=False"):
        ClipTransform(64, 32, train=True).held_views(frames)
