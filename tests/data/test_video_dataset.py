"""Clip sampling, the training / evaluation datasets, collation and tokenizer pickling."""

from __future__ import annotations

import logging
import math
import pickle
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.datasets import write_ytvos_dataset
from torch.utils.data import DataLoader

from mpgsam2.data import (
    ClipTransform,
    ExpressionRecord,
    ReferringClipDataset,
    ReferringCollate,
    ReferringItem,
    ReferringVideoEvalDataset,
    RefYTVOSSource,
    VideoRecord,
    normalize_caption,
    sample_clip_indices,
)
from mpgsam2.data.transforms import resize_masks
from mpgsam2.text import Beit3Tokenizer

# ------------------------------------------------------------------------------------------------- sampling


def _local_draws(seed: int) -> tuple[int, int]:
    rng = random.Random(seed)
    return rng.randint(1, 3), rng.randint(1, 3)


@pytest.mark.parametrize("clip_len", [3, 4, 5, 8])
def test_sampling_local_window_and_global_frames(clip_len: int) -> None:
    n = 40
    for seed in range(60):
        anchor = (7 * seed) % n
        clip = sample_clip_indices(anchor, n, clip_len, random.Random(seed))
        assert len(clip) == clip_len and clip == sorted(clip) and all(0 <= i < n for i in clip)
        before, after = _local_draws(seed)
        local = [anchor, max(0, anchor - before), min(n - 1, anchor + after)]
        rest = Counter(clip)
        rest.subtract(local)
        assert all(c >= 0 for c in rest.values()), (seed, clip, local)  # the local frames are in the clip
        extra = list(rest.elements())
        assert len(extra) == clip_len - 3
        lo, hi = min(local), max(local)
        # 40 frames leave enough room: global frames are distinct and strictly outside the local window.
        assert len(set(extra)) == len(extra) and all(i < lo or i > hi for i in extra)


def test_sampling_short_clips_mirror_the_original() -> None:
    rng = random.Random(0)
    state = rng.getstate()
    assert sample_clip_indices(4, 10, 1, rng) == [4]
    assert rng.getstate() == state  # T = 1 draws nothing
    for seed in range(30):
        before, _ = _local_draws(seed)
        assert sample_clip_indices(5, 10, 2, random.Random(seed)) == [5 - before, 5]
        assert sample_clip_indices(0, 10, 2, random.Random(seed)) == [0, 0]  # clamped at the start
    befores = {_local_draws(s)[0] for s in range(50)}
    assert befores == {1, 2, 3}


def test_sampling_fallbacks() -> None:
    for seed in range(30):
        # 6 frames, anchor 3: the window covers (nearly) everything, so global frames come from the whole video.
        clip = sample_clip_indices(3, 6, 6, random.Random(seed))
        before, after = _local_draws(seed)
        local = [3, 3 - before, min(5, 3 + after)]
        extra = Counter(clip)
        extra.subtract(local)
        extra = list(extra.elements())
        assert len(clip) == 6 and clip == sorted(clip)
        outside = [i for i in range(6) if i < min(local) or i > max(local)]
        if len(outside) >= 3:
            assert all(i in outside for i in extra)
        else:
            assert len(set(extra)) == 3  # without replacement from the whole video
        # 2 frames, 8-frame clip: 5 global frames by repetition (every frame twice + one more).
        clip = sample_clip_indices(1, 2, 8, random.Random(seed))
        assert len(clip) == 8 and set(clip) == {0, 1} and clip == sorted(clip)
        assert sample_clip_indices(0, 1, 5, random.Random(seed)) == [0] * 5


def test_sampling_is_deterministic_and_validates() -> None:
    assert sample_clip_indices(10, 30, 5, random.Random(7)) == sample_clip_indices(
        10, 30, 5, random.Random(7)
    )
    assert len({tuple(sample_clip_indices(10, 30, 5, random.Random(s))) for s in range(20)}) > 10
    for args in [(0, 0, 3), (5, 5, 3), (-1, 5, 3), (0, 5, 0)]:
        with pytest.raises(ValueError):
            sample_clip_indices(*args, random.Random(0))


# ------------------------------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> RefYTVOSSource:
    return RefYTVOSSource(write_ytvos_dataset(tmp_path_factory.mktemp("ytvos"), "train"))


@pytest.fixture(scope="module")
def spm_path(fixture_dir: Path) -> Path:
    return fixture_dir / "tiny_sentencepiece.model"


def _train_tf(**kwargs) -> ClipTransform:
    return ClipTransform(sam_size=16, beit_size=8, train=True, **kwargs)


@pytest.mark.parametrize("num_frames", [1, 2, 3, 5, 8])
def test_clip_dataset_length_is_the_epoch_definition(source: RefYTVOSSource, num_frames: int) -> None:
    ds = ReferringClipDataset(source, num_frames, _train_tf())
    assert [e.video.num_frames for e in source.expressions] == [6, 6, 4, 7, 7, 7]
    assert len(ds) == sum(math.ceil(e.video.num_frames / num_frames) for e in source.expressions)
    # Items enumerate (expression, anchor) in order, anchors every num_frames frames.
    pairs = [ds.locate(i) for i in range(len(ds))]
    expected = [(e, a) for e in source.expressions for a in range(0, e.video.num_frames, num_frames)]
    assert pairs == expected
    with pytest.raises(IndexError):
        ds.locate(len(ds))


def test_clip_dataset_item_contract(source: RefYTVOSSource) -> None:
    ds = ReferringClipDataset(source, 3, _train_tf(hflip_p=0.0, photometric=False), seed=1)
    for i in range(len(ds)):
        item = ds[i]
        assert type(item) is ReferringItem and item.orig_masks is None
        assert item.sam_frames.shape == (3, 3, 16, 16) and item.sam_frames.dtype == torch.float32
        assert item.beit_frames.shape == (3, 3, 8, 8) and item.beit_frames.dtype == torch.float32
        assert item.masks.shape == (3, 16, 16) and item.masks.dtype == torch.float32
        assert item.valid.dtype == torch.bool and item.valid.tolist() == item.masks.flatten(1).any(1).tolist()
        assert item.valid.any()
        meta = item.meta
        expr = next(
            e for e in source.expressions if (e.video.video_id, e.exp_id) == (meta.video, meta.exp_id)
        )
        assert meta.frame_names == [expr.video.frame_names[k] for k in meta.frame_indices]
        assert meta.orig_size == ((20, 28) if meta.video == "vid_c" else (24, 32))
        assert item.caption == normalize_caption(expr.caption)
        # Without augmentation the target is exactly the resized annotation.
        expected = resize_masks(source.read_masks(expr, meta.frame_indices), 16)
        assert torch.equal(item.masks, expected)
    assert ds[4].caption == "a red square at the top"  # vid_b: lower-cased, whitespace collapsed


def test_clip_dataset_is_deterministic_per_seed_and_epoch(source: RefYTVOSSource) -> None:
    a = ReferringClipDataset(source, 3, _train_tf(), seed=4)
    b = ReferringClipDataset(source, 3, _train_tf(), seed=4)
    order = list(range(len(a)))
    items_a = [a[i] for i in order]
    items_b = [b[i] for i in reversed(order)][::-1]  # request order does not matter
    for x, y in zip(items_a, items_b):
        assert x.meta == y.meta and x.caption == y.caption
        assert torch.equal(x.sam_frames, y.sam_frames) and torch.equal(x.masks, y.masks)
    copy = pickle.loads(pickle.dumps(a))  # what a DataLoader worker gets
    assert torch.equal(copy[5].sam_frames, items_a[5].sam_frames)
    a.set_epoch(1)
    epoch1 = [a[i] for i in order]
    assert any(not torch.equal(x.sam_frames, y.sam_frames) for x, y in zip(items_a, epoch1))
    a.set_epoch(0)
    assert torch.equal(a[2].beit_frames, items_a[2].beit_frames)
    other_seed = ReferringClipDataset(source, 3, _train_tf(), seed=5)
    assert any(not torch.equal(other_seed[i].sam_frames, items_a[i].sam_frames) for i in order)


def test_clip_dataset_resamples_clips_without_the_object(source: RefYTVOSSource) -> None:
    # With T = 1 the clip is the anchor alone; vid_a's object 2 is absent at anchors 0, 1 and 5.
    ds = ReferringClipDataset(source, 1, _train_tf(hflip_p=0.0, photometric=False), seed=0)
    blue = source.expressions[1]
    assert blue.obj_ids == (2,)
    for i in range(len(ds)):
        expr, anchor = ds.locate(i)
        item = ds[i]
        assert item.valid.tolist() == [True]
        if expr is blue and anchor in (0, 1, 5):
            meta = item.meta
            assert (meta.video, meta.exp_id, meta.frame_indices) != ("vid_a", "1", [anchor])


class _TinyObjectSource:
    """One 3-frame video whose object is a single pixel, lost when masks are resized to 4x4."""

    name = "tiny-object"
    has_masks = True
    expressions_file = Path("tiny-object.json")

    def __init__(self) -> None:
        video = VideoRecord("v", ("0", "1", "2"), (Path("0.jpg"), Path("1.jpg"), Path("2.jpg")))
        self.expressions = [ExpressionRecord(video, "0", "a dot", (1,))]
        self.mask_reads = 0

    def read_frames(self, video: VideoRecord, indices) -> np.ndarray:
        return np.zeros((len(indices), 24, 32, 3), dtype=np.uint8)

    def read_masks(self, expression: ExpressionRecord, indices) -> np.ndarray:
        self.mask_reads += 1
        masks = np.zeros((len(indices), 24, 32), dtype=bool)
        masks[:, 1, 1] = True
        return masks


def test_clip_dataset_gives_up_after_bounded_retries(caplog: pytest.LogCaptureFixture) -> None:
    src = _TinyObjectSource()
    ds = ReferringClipDataset(src, 2, ClipTransform(4, 4, train=True), max_resample=3)
    with caplog.at_level(logging.WARNING, logger="mpgsam2.data.video_dataset"):
        item = ds[0]
    assert src.mask_reads == 4
    assert item.valid.tolist() == [False, False] and not item.masks.any()
    assert "4 attempts" in caplog.text


def test_clip_dataset_needs_masks(tmp_path: Path) -> None:
    root = write_ytvos_dataset(tmp_path, "valid", annotations=False, obj_ids_in_json=False)
    with pytest.raises(ValueError, match="ytvos/valid"):
        ReferringClipDataset(RefYTVOSSource(root, "valid"), 5, _train_tf())


def test_eval_dataset_items(source: RefYTVOSSource) -> None:
    ds = ReferringVideoEvalDataset(source, ClipTransform(16, 8, train=False))
    assert len(ds) == len(source.expressions)
    for i, expr in enumerate(source.expressions):
        item = ds[i]
        n = expr.video.num_frames
        assert item.sam_frames.shape == (n, 3, 16, 16) and item.beit_frames.shape == (n, 3, 8, 8)
        assert item.caption == expr.caption  # raw
        assert item.meta.frame_indices == list(range(n))
        assert item.meta.frame_names == list(expr.video.frame_names)
        gt = source.read_masks(expr, range(n))
        assert item.orig_masks.dtype == torch.bool and np.array_equal(item.orig_masks.numpy(), gt)
        assert torch.equal(item.masks, resize_masks(gt, 16))
        assert item.valid.tolist() == gt.any((1, 2)).tolist()
    again = ds[1]
    assert torch.equal(again.sam_frames, ds[1].sam_frames)
    short = ReferringVideoEvalDataset(source, ClipTransform(16, 8, train=False), max_frames=2)
    assert short[0].sam_frames.shape[0] == 2 and short[0].meta.frame_names == ["00000", "00005"]
    with pytest.raises(ValueError, match="train=False"):
        ReferringVideoEvalDataset(source, _train_tf())


def test_eval_dataset_without_masks(tmp_path: Path) -> None:
    root = write_ytvos_dataset(tmp_path, "valid", annotations=False, obj_ids_in_json=False)
    ds = ReferringVideoEvalDataset(RefYTVOSSource(root, "valid"), ClipTransform(16, 8, train=False))
    item = ds[0]
    assert item.orig_masks is None
    assert item.masks.shape == (6, 16, 16) and not item.masks.any() and not item.valid.any()


# ------------------------------------------------------------------------------------ collate and tokenizer


def test_collate_training_batch(source: RefYTVOSSource, spm_path: Path) -> None:
    tok = Beit3Tokenizer(spm_path)
    collate = ReferringCollate(tok)
    ds = ReferringClipDataset(source, 3, _train_tf(hflip_p=0.0))
    items = [ds[0], ds[4]]  # vid_a "the red square on the left", vid_b "a red square at the top"
    batch = collate(items)
    assert batch.sam_frames.shape == (2, 3, 3, 16, 16) and batch.beit_frames.shape == (2, 3, 3, 8, 8)
    assert batch.masks.shape == (2, 3, 16, 16) and batch.valid.shape == (2, 3)
    assert batch.caption == [items[0].caption, items[1].caption]
    assert batch.meta == [items[0].meta, items[1].meta] and batch.orig_masks is None
    ids, pad = batch.text_ids, batch.text_padding_mask
    lengths = [len(tok.encode(c)) for c in batch.caption]
    assert ids.dtype == torch.long and pad.dtype == torch.bool and ids.shape == (2, max(lengths))
    assert lengths[0] != lengths[1]
    for row, n in enumerate(lengths):
        assert ids[row, :n].tolist() == tok.encode(batch.caption[row])
        assert (ids[row, n:] == tok.pad_id).all() and pad[row, n:].all()
    assert torch.equal(pad, ids == tok.pad_id)
    loader = DataLoader(ds, batch_size=2, collate_fn=collate)
    first = next(iter(loader))
    assert torch.equal(first.sam_frames, collate([ds[0], ds[1]]).sam_frames)


def test_collate_eval_batch_keeps_orig_masks(source: RefYTVOSSource, spm_path: Path) -> None:
    collate = ReferringCollate(Beit3Tokenizer(spm_path))
    ds = ReferringVideoEvalDataset(source, ClipTransform(16, 8, train=False))
    batch = collate([ds[0]])
    assert batch.sam_frames.shape == (1, 6, 3, 16, 16)
    assert isinstance(batch.orig_masks, list) and batch.orig_masks[0].shape == (6, 24, 32)
    with pytest.raises(ValueError, match="batch size 1"):
        collate([ds[0], ds[2]])  # 6 and 4 frames


def test_tokenizer_and_collate_pickle(source: RefYTVOSSource, spm_path: Path) -> None:
    tok = Beit3Tokenizer(spm_path, unk_as_pad=False)
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.pad_id == tok.pad_id == 1 and copy.spm_path == tok.spm_path
    text = "the red square on the left"
    assert copy.encode(text) == tok.encode(text)
    collate = pickle.loads(pickle.dumps(ReferringCollate(tok)))
    ds = ReferringClipDataset(source, 2, _train_tf())
    assert torch.equal(collate([ds[0]]).text_ids, ReferringCollate(tok)([ds[0]]).text_ids)


def test_eval_dataset_can_skip_the_ground_truth(tmp_path):
    """Prediction runs read frames only: with_masks=False never calls read_masks."""
    from helpers.datasets import write_ytvos_dataset

    from mpgsam2.data import ClipTransform, ReferringVideoEvalDataset, RefYTVOSSource

    source = RefYTVOSSource(write_ytvos_dataset(tmp_path / "ytvos", "train"), "train")
    calls = []
    source.read_masks = lambda *a: calls.append(a)  # type: ignore[method-assign]
    item = ReferringVideoEvalDataset(source, ClipTransform(16, 16, train=False), with_masks=False)[0]
    assert calls == [] and item.orig_masks is None and not item.valid.any()
