"""Scoring prediction folders and zips (mpgsam2.metrics.scoring): Ref-YouTube-VOS / MeViS J&F, RefCOCO folders,
and the Ref-DAVIS17 unsupervised protocol (matching, void pixels, annotator sets); on tiny datasets in the
Ref-YouTube-VOS layout."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.datasets import write_refcoco_dataset
from helpers.evaluation import WithObjectIds
from PIL import Image

from mpgsam2.data import DatasetError, RefCOCOSource, RefYTVOSSource, read_palette_mask
from mpgsam2.data.synthetic import davis_palette
from mpgsam2.evaluation.zips import write_zip
from mpgsam2.metrics import JFMetric, boundary_f_measure, region_similarity
from mpgsam2.metrics.scoring import davis_unsupervised_scores, score_predictions


def _write_masks(root: Path, source: RefYTVOSSource, masks_of, scale: int = 255) -> Path:
    """``<root>/<video>/<exp>/<frame>.png`` from ``masks_of(expr) -> bool (T, H, W)``."""
    for expr in source.expressions:
        folder = root / expr.video.video_id / expr.exp_id
        folder.mkdir(parents=True)
        for name, mask in zip(expr.video.frame_names, masks_of(expr)):
            Image.fromarray(mask.astype(np.uint8) * scale).save(folder / f"{name}.png")
    return root


def _all_frames(source, expr) -> np.ndarray:
    return source.read_masks(expr, range(expr.video.num_frames))


def test_perfect_predictions_score_one(train_source, tmp_path: Path) -> None:
    pred = _write_masks(tmp_path / "pred", train_source, lambda e: _all_frames(train_source, e))
    assert score_predictions(pred, train_source, "ytvos") == {
        "j": 1.0,
        "f": 1.0,
        "jf": 1.0,
        "num_expressions": 6,
    }
    # MeViS PNGs keep p * 255 (127..255): any non-zero value is foreground
    mevis = _write_masks(tmp_path / "mevis", train_source, lambda e: _all_frames(train_source, e), scale=127)
    assert score_predictions(mevis, train_source, "mevis")["jf"] == 1.0


def test_empty_predictions_score_the_fraction_of_frames_without_the_object(
    train_source, tmp_path: Path
) -> None:
    pred = _write_masks(
        tmp_path / "pred", train_source, lambda e: np.zeros_like(_all_frames(train_source, e))
    )
    result = score_predictions(pred, train_source, "ytvos")
    # J = F = 1 exactly where the object is absent (both masks empty), else 0; only vid_a's object 2 is absent
    # (in 3 of its 6 frames); 6 expressions
    assert result["j"] == pytest.approx(0.5 / 6) and result["f"] == pytest.approx(0.5 / 6)
    assert result["jf"] == pytest.approx(0.5 / 6)


def test_scoring_equals_jfmetric_on_the_same_masks(train_source, tmp_path: Path) -> None:
    def shifted(expr):
        masks = _all_frames(train_source, expr)
        return np.roll(masks, (1, 2 + int(expr.exp_id)), axis=(1, 2))

    pred = _write_masks(tmp_path / "pred", train_source, shifted)
    metric = JFMetric()
    for expr in train_source.expressions:
        metric.update(torch.from_numpy(shifted(expr)), torch.from_numpy(_all_frames(train_source, expr)))
    expected = metric.compute()
    got = score_predictions(pred, train_source, "ytvos")
    assert 0.1 < got["jf"] < 0.9
    for key in ("j", "f", "jf"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12)
    # the same PNGs in a Ref-YouTube-VOS style zip (under Annotations/) score the same
    files = [(f"Annotations/{p.relative_to(pred).as_posix()}", p) for p in pred.rglob("*.png")]
    zipped = write_zip(tmp_path / "sub.zip", files)
    assert score_predictions(zipped, train_source, "ytvos")["jf"] == pytest.approx(got["jf"], abs=1e-12)


def test_scoring_names_a_missing_or_wrongly_sized_png(train_source, tmp_path: Path) -> None:
    pred = _write_masks(tmp_path / "pred", train_source, lambda e: _all_frames(train_source, e))
    missing = pred / "vid_c" / "1" / "00015.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=str(missing)):
        score_predictions(pred, train_source, "ytvos")
    Image.new("L", (10, 10)).save(missing)
    with pytest.raises(DatasetError, match=f"{missing}.*10x10.*28x20"):
        score_predictions(pred, train_source, "ytvos")


def test_scoring_refuses_a_split_without_ground_truth(valid_source, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no public ground truth"):
        score_predictions(tmp_path, valid_source, "ytvos")


def test_scoring_a_folder_follows_the_benchmark_table(train_source, tmp_path: Path) -> None:
    # RefCOCO folders are scored (from <sample_id>.png files): an empty one is missing all three predictions
    refcoco = RefCOCOSource(
        write_refcoco_dataset(tmp_path / "coco", "refcoco", "val").parents[1], "refcoco", "val"
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="1.png: prediction PNG not found; 3 of the 3 predictions"):
        score_predictions(tmp_path / "empty", refcoco, "refcoco")
    with pytest.raises(ValueError, match="unknown benchmark 'kitti'"):
        score_predictions(tmp_path, train_source, "kitti")


# ------------------------------------------------------------------------------------------------ Ref-DAVIS17


def _brute_force_unsupervised(gt: np.ndarray, labels: np.ndarray, void: np.ndarray | None):
    """The toolkit's rule by enumeration: the assignment of predictions to objects with the best total."""
    n_pred = max(int(labels.max()), gt.shape[0])
    keep = np.ones(labels.shape, bool) if void is None else ~void
    scores = {}
    for r in range(n_pred):
        for g in range(gt.shape[0]):
            pred = (labels == r + 1) & keep
            scores[r, g] = (
                region_similarity(pred, gt[g]).numpy().mean(),
                boundary_f_measure(pred, gt[g]).numpy().mean(),
            )
    best = max(
        itertools.permutations(range(n_pred), gt.shape[0]),
        key=lambda rows: sum(sum(scores[r, g]) for g, r in enumerate(rows)),
    )
    return np.array([scores[r, g][0] for g, r in enumerate(best)]), np.array(
        [scores[r, g][1] for g, r in enumerate(best)]
    )


def test_davis_unsupervised_matching_and_void() -> None:
    g = np.random.default_rng(0)
    gt = np.zeros((2, 3, 20, 24), bool)
    gt[0, :, 2:9, 3:10] = True
    gt[1, :, 10:18, 12:22] = True
    gt[1, 2] = False  # object 2 absent from the last frame
    labels = np.zeros((3, 20, 24), np.uint8)
    labels[:, 10:17, 13:22] = 1  # prediction 1 ~ object 2
    labels[:, 3:9, 3:11] = 3  # prediction 3 ~ object 1; prediction 2 is empty
    labels[g.random(labels.shape) < 0.05] = 2
    void = np.zeros_like(labels, bool)
    void[:, :, :2] = True
    for v in (None, void):
        j, f = davis_unsupervised_scores(gt, labels, v)
        ref_j, ref_f = _brute_force_unsupervised(gt, labels, v)
        np.testing.assert_allclose(j, ref_j, atol=1e-12)
        np.testing.assert_allclose(f, ref_f, atol=1e-12)
    # swapping the labels of the two objects changes nothing (unsupervised: matched, not read by id)
    swapped = np.where(labels == 1, 3, np.where(labels == 3, 1, labels)).astype(np.uint8)
    np.testing.assert_allclose(
        davis_unsupervised_scores(gt, swapped)[0], davis_unsupervised_scores(gt, labels)[0]
    )
    with pytest.raises(DatasetError, match="anno_0/vid.*21"):
        davis_unsupervised_scores(gt, np.full_like(labels, 21), where="anno_0/vid")


def _write_davis_predictions(pred: Path, source: RefYTVOSSource, labels_of) -> Path:
    for k in range(4):
        for video in source.videos:
            folder = pred / f"anno_{k}" / video.video_id
            folder.mkdir(parents=True)
            for t, name in enumerate(video.frame_names):
                img = Image.fromarray(labels_of(k, video, t))
                img.putpalette(davis_palette())
                img.save(folder / f"{name}.png")
    return pred


@pytest.mark.parametrize("raw_ids", [False, True])
def test_davis_empty_predictions_and_annotator_mean(davis_source, tmp_path: Path, raw_ids: bool) -> None:
    def labels_of(k, video, t):  # annotator sets 2 and 3 perfect, 0 and 1 empty
        ids = read_palette_mask(davis_source.mask_path(video, t), None)
        return ids if k in (2, 3) else np.zeros_like(ids)

    pred = _write_davis_predictions(tmp_path / "pred", davis_source, labels_of)
    result = score_predictions(pred, WithObjectIds(davis_source) if raw_ids else davis_source, "davis")
    # empty: J = F = 1 only in frames where the object is absent: bike's object 2 in 2 of 5 frames, dogs' object 3
    # in 2 of 4; 5 objects
    empty = (2 / 5 + 2 / 4) / 5
    assert result["num_objects"] == 5
    assert result["annotators"]["anno_0"]["j"] == pytest.approx(empty)
    assert result["annotators"]["anno_1"]["f"] == pytest.approx(empty)
    assert result["annotators"]["anno_3"] == {"j": 1.0, "f": 1.0, "jf": 1.0}
    assert result["jf"] == pytest.approx((2 * empty + 2 * 1.0) / 4)
    shutil.rmtree(pred / "anno_3")
    with pytest.raises(DatasetError, match="anno_3: annotator folder not found"):
        score_predictions(pred, davis_source, "davis")


def test_davis_scoring_names_a_bad_png(davis_source, tmp_path: Path) -> None:
    pred = _write_davis_predictions(
        tmp_path / "pred", davis_source, lambda k, v, t: read_palette_mask(davis_source.mask_path(v, t), None)
    )
    bad = pred / "anno_1" / "dogs" / "00005.png"
    Image.new("RGB", (28, 20)).save(bad)
    with pytest.raises(DatasetError, match=f"{bad}.*'RGB'"):
        score_predictions(pred, davis_source, "davis")
    bad.unlink()
    with pytest.raises(DatasetError, match=f"{bad}: prediction PNG not found"):
        score_predictions(pred, davis_source, "davis")


def test_davis_void_pixels_are_excluded(train_source, tmp_path: Path) -> None:
    source = WithObjectIds(train_source)
    video = train_source.videos[1]  # vid_b: object 1 only
    truth = source.read_object_masks(video, range(video.num_frames))
    void = np.zeros_like(truth, bool)
    void[:, :, :3] = True  # the left 3 columns cover part of the object

    class _WithVoid(WithObjectIds):
        def read_object_masks(self, v, indices):  # noqa: ANN001, ANN201
            ids = super().read_object_masks(v, indices)
            return np.where(void[: len(ids)], 255, ids).astype(np.uint8) if v.video_id == "vid_b" else ids

    voided = _WithVoid(train_source)
    voided.expressions = [e for e in train_source.expressions if e.video.video_id == "vid_b"]
    pred = tmp_path / "pred"
    for k in range(4):
        folder = pred / f"anno_{k}" / "vid_b"
        folder.mkdir(parents=True)
        for t, name in enumerate(video.frame_names):
            ids = truth[t].copy()
            ids[:, :3] = 1  # wrong only inside the void region
            Image.fromarray(ids).save(folder / f"{name}.png")
    assert score_predictions(pred, voided, "davis")["jf"] == 1.0
    plain = WithObjectIds(train_source)
    plain.expressions = voided.expressions
    assert score_predictions(pred, plain, "davis")["jf"] < 1.0
