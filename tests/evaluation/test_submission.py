"""Submission writers (post-processing, resumable staging, sharding, zips) and scoring of prediction folders, on
tiny datasets in the Ref-YouTube-VOS layout with a fake predictor (no model)."""

from __future__ import annotations

import io
import itertools
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.datasets import default_ytvos_videos, expected_mask, write_refcoco_dataset, write_ytvos_dataset
from PIL import Image

from mpgsam2.benchmarks import benchmark
from mpgsam2.data import (
    ClipTransform,
    DatasetError,
    ExpressionRecord,
    RefCOCOSource,
    ReferringBatch,
    ReferringCollate,
    RefYTVOSSource,
    VideoRecord,
    read_palette_mask,
)
from mpgsam2.data.synthetic import davis_palette
from mpgsam2.inference import (
    EvalTarget,
    PaletteMerger,
    StagingArea,
    binary_masks,
    check_manifest,
    model_predictor,
    predict_to_staging,
    probability_masks,
    shard,
    write_submission_zip,
    write_zip,
)
from mpgsam2.metrics import JFMetric, boundary_f_measure, region_similarity
from mpgsam2.metrics.scoring import davis_unsupervised_scores, score_predictions


class _StubTokenizer:
    """Enough of a tokenizer for ReferringCollate (the fake predictors ignore the text)."""

    pad_id = 1

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(len(texts), 3, dtype=torch.long), torch.ones(len(texts), 3, dtype=torch.bool)


COLLATE = ReferringCollate(_StubTokenizer())
TRANSFORM = ClipTransform(16, 8, train=False)


class PatternPredictor:
    """Deterministic logits that differ per video, expression and frame (covering p < 0.5, 0.5..1); counts calls
    and can fail after ``fail_after`` calls (an interrupted run)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_after = fail_after

    def __call__(self, batch: ReferringBatch) -> torch.Tensor:
        meta = batch.meta[0]
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls.append((meta.video, meta.exp_id))
        t, (h, w) = len(meta.frame_names), meta.orig_size
        seed = sum(map(ord, meta.video + "/" + meta.exp_id))
        g = torch.Generator().manual_seed(seed)
        return torch.randn(t, h, w, generator=g) * 3


class TruthPredictor:
    """Logits +5 on the ground truth of the expression, -5 elsewhere (perfect predictions)."""

    def __init__(self, source: RefYTVOSSource) -> None:
        self.by_key = {(e.video.video_id, e.exp_id): e for e in source.expressions}
        self.source = source

    def __call__(self, batch: ReferringBatch) -> torch.Tensor:
        meta = batch.meta[0]
        expr = self.by_key[(meta.video, meta.exp_id)]
        masks = self.source.read_masks(expr, meta.frame_indices)
        return torch.from_numpy(np.where(masks, 5.0, -5.0).astype(np.float32))


@pytest.fixture
def valid_source(tmp_path: Path) -> RefYTVOSSource:
    root = write_ytvos_dataset(
        tmp_path / "ytvos", "valid", annotations=False, obj_ids_in_json=False, test_videos=("vid_b",)
    )
    return RefYTVOSSource(root, "valid")


@pytest.fixture
def train_source(tmp_path: Path) -> RefYTVOSSource:
    return RefYTVOSSource(write_ytvos_dataset(tmp_path / "ytvos", "train"), "train")


# Ref-DAVIS17-like videos: object ids 1..N, all present in the first frame (as DAVIS-2017), some absent later
DAVIS_VIDEOS = {
    "bike": {
        "num_frames": 5,
        "objects": {1: None, 2: [0, 1, 2]},
        "expressions": {"0": ("a", 1), "4": ("b", 2)},
    },
    "dogs": {
        "num_frames": 4,
        "size": (20, 28),
        "objects": {1: None, 2: None, 3: [0, 3]},
        "expressions": {"0": ("a", 1), "4": ("b", 2), "8": ("c", 3)},
    },
}


@pytest.fixture
def davis_source(tmp_path: Path) -> RefYTVOSSource:
    return RefYTVOSSource(write_ytvos_dataset(tmp_path / "davis", "train", DAVIS_VIDEOS), "train")


def _stage(source, run_dir: Path, predictor, mask_format="binary", **kwargs) -> StagingArea:
    staging = StagingArea(run_dir / "staging")
    predict_to_staging(
        predictor, [EvalTarget(source)], staging, mask_format, transform=TRANSFORM, collate=COLLATE, **kwargs
    )
    return staging


def _expected_names(source: RefYTVOSSource, prefix: str) -> set[str]:
    return {
        f"{prefix}{e.video.video_id}/{e.exp_id}/{name}.png"
        for e in source.expressions
        for name in e.video.frame_names
    }


# ------------------------------------------------------------------------------------------------ post-processing


def test_binary_and_probability_pngs_follow_the_original_conversions() -> None:
    probs = torch.tensor([0.0, 0.49, 0.5, 0.5001, 0.75, 0.999, 1.0])
    assert binary_masks(probs).tolist() == [0, 0, 0, 255, 255, 255, 255]
    assert probability_masks(probs).tolist() == [0, 0, 127, 127, 191, 254, 255]
    # the original: p[p < 0.5] = 0; Image.fromarray(p * 255).convert("L")
    p = torch.rand(7, 9, generator=torch.Generator().manual_seed(0))
    ref = p.numpy().copy()
    ref[ref < 0.5] = 0
    expected = np.asarray(Image.fromarray(ref.astype(np.float32) * 255).convert("L"))
    np.testing.assert_array_equal(probability_masks(p), expected)


def test_palette_merger_equals_argmax_over_background_and_objects() -> None:
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(3, 2, 5, 6, generator=g)
    probs[1, 0, 0, :3] = probs[0, 0, 0, :3] = 0.8  # ties: the earlier object wins, as argmax
    probs[2, 0, 0, :3] = 0.3
    labels = [4, 2, 7]
    merger = PaletteMerger((2, 5, 6))
    for label, p in zip(labels, probs):
        merger.add(label, p)
    zeroed = torch.where(probs < 0.5, torch.zeros_like(probs), probs)
    stacked = torch.cat([torch.full((1, 2, 5, 6), 0.1), zeroed])
    expected = torch.tensor([0, *labels])[stacked.argmax(0)]
    np.testing.assert_array_equal(merger.result(), expected.numpy())
    assert (merger.result()[0, 0, :3] == 4).all()
    with pytest.raises(ValueError, match="added twice"):
        merger.add(4, probs[0])


def test_shard_is_round_robin_and_complete() -> None:
    items = list(range(7))
    parts = [shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(itertools.chain(*parts)) == items
    with pytest.raises(ValueError):
        shard(items, 3, 3)


# ------------------------------------------------------------------------------------------------ zips


def test_ytvos_submission_zip_has_exactly_the_expected_pngs(valid_source, tmp_path: Path) -> None:
    assert [v.video_id for v in valid_source.videos] == ["vid_a", "vid_c"]  # vid_b is a test video
    staging = _stage(valid_source, tmp_path / "run", PatternPredictor())
    path = write_submission_zip(
        tmp_path / "run" / "submission.zip", staging, [EvalTarget(valid_source)], "ytvos"
    )
    spec = default_ytvos_videos()
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert set(names) == _expected_names(valid_source, "Annotations/") and len(names) == len(set(names))
        assert len(names) == 2 * 6 + 3 * 7
        for name in names:
            video = name.split("/")[1]
            with Image.open(zf.open(name)) as img:
                assert img.mode == "L"
                assert (img.height, img.width) == tuple(spec[video].get("size", (24, 32)))
                assert set(np.unique(np.asarray(img))) <= {0, 255}
    assert not (tmp_path / "run" / "submission.zip.tmp").exists()


def test_mevis_style_zip_has_the_videos_at_its_root(valid_source, tmp_path: Path) -> None:
    staging = _stage(valid_source, tmp_path / "run", PatternPredictor(), "probability")
    path = write_submission_zip(tmp_path / "sub.zip", staging, [EvalTarget(valid_source)], "mevis")
    with zipfile.ZipFile(path) as zf:
        assert set(zf.namelist()) == _expected_names(valid_source, "")
        values = np.concatenate([np.asarray(Image.open(zf.open(n))).ravel() for n in zf.namelist()])
    assert values.min() == 0 and values.max() > 200 and not ((values > 0) & (values < 127)).any()
    with pytest.raises(ValueError, match="Ref-DAVIS17 has no submission server"):
        write_submission_zip(tmp_path / "d.zip", staging, [EvalTarget(valid_source)], "davis")


def test_interrupted_run_resumes_to_the_same_zip(valid_source, tmp_path: Path) -> None:
    targets = [EvalTarget(valid_source)]
    clean = _stage(valid_source, tmp_path / "clean", PatternPredictor())
    reference = write_submission_zip(
        tmp_path / "clean" / "submission.zip", clean, targets, "ytvos"
    ).read_bytes()

    run = tmp_path / "run"
    crashing = PatternPredictor(fail_after=3)  # vid_a (2 expressions) completes, vid_c stops after 1 of 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        _stage(valid_source, run, crashing)
    staging = StagingArea(run / "staging")
    assert staging.is_done(("vid_a",)) and not staging.is_done(("vid_c",))
    assert (staging.partial_root / "vid_c").is_dir()  # the half-written video never reached staging/
    assert not (run / "submission.zip").exists()

    again = PatternPredictor()
    staging = _stage(valid_source, run, again)
    assert {v for v, _ in again.calls} == {"vid_c"}  # the finished video is skipped
    staging.remove_partials()
    zipped = write_submission_zip(run / "submission.zip", staging, targets, "ytvos")
    assert zipped.read_bytes() == reference
    leftovers = [p for p in run.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert leftovers == [] and not staging.partial_root.exists()


def test_sharded_processes_split_the_videos_and_give_the_same_zip(valid_source, tmp_path: Path) -> None:
    targets = [EvalTarget(valid_source)]
    single = _stage(valid_source, tmp_path / "single", PatternPredictor())
    reference = write_submission_zip(tmp_path / "single.zip", single, targets, "ytvos").read_bytes()
    staging = StagingArea(tmp_path / "sharded" / "staging")
    written = []
    for rank in range(2):
        written.append(
            predict_to_staging(
                PatternPredictor(),
                targets,
                staging,
                "binary",
                transform=TRANSFORM,
                collate=COLLATE,
                rank=rank,
                world=2,
            )
        )
    # balanced by cost (frames x expressions): the larger vid_c alone on rank 0, vid_a on rank 1
    assert written == [[("vid_c",)], [("vid_a",)]]
    assert write_submission_zip(tmp_path / "sharded.zip", staging, targets, "ytvos").read_bytes() == reference


def test_zip_is_not_left_behind_when_writing_fails(valid_source, tmp_path: Path) -> None:
    staging = _stage(valid_source, tmp_path / "run", PatternPredictor())
    (staging.root / "vid_c" / "2" / "00010.png").unlink()
    with pytest.raises(FileNotFoundError, match="00010.png"):
        write_submission_zip(tmp_path / "s.zip", staging, [EvalTarget(valid_source)], "ytvos")
    with pytest.raises(FileNotFoundError):
        write_zip(tmp_path / "t.zip", [("a.png", tmp_path / "missing.png")])
    assert not (tmp_path / "s.zip").exists() and not list(tmp_path.glob("*.tmp"))


class _ListSource:
    """A source from hand-made records (the writer must not trust them)."""

    def __init__(self, expressions: list[ExpressionRecord]) -> None:
        self.name = "handmade"
        self.expressions_file = Path("/data/meta_expressions.json")
        self.expressions = expressions
        self.has_masks = False

    def read_frames(self, video, indices):  # noqa: ANN001, ANN201
        return np.zeros((len(indices), 4, 4, 3), np.uint8)

    def read_masks(self, expression, indices):  # noqa: ANN001, ANN201
        raise AssertionError


@pytest.mark.parametrize("field, value", [("video_id", "../x"), ("video_id", "/abs"), ("exp_id", "../../e")])
def test_writer_refuses_unsafe_ids(tmp_path: Path, field: str, value: str) -> None:
    video = VideoRecord("v", ("00000",), (Path("00000.jpg"),))
    expr = ExpressionRecord(video, "0", "a cat", ())
    # the records validate on construction; a source that bypasses them must still be refused by the writer
    object.__setattr__(video if field == "video_id" else expr, field, value)
    with pytest.raises(DatasetError, match="meta_expressions.json") as err:
        _stage(_ListSource([expr]), tmp_path / "run", PatternPredictor())
    assert repr(value) in str(err.value)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_manifest_refuses_to_mix_runs(tmp_path: Path) -> None:
    path = tmp_path / "staging.json"
    check_manifest(path, {"checkpoint": "a.ckpt", "chunk_size": None})
    check_manifest(path, {"checkpoint": "a.ckpt", "chunk_size": None})  # the same run resumes
    with pytest.raises(ValueError, match="staging.json.*chunk_size"):
        check_manifest(path, {"checkpoint": "a.ckpt", "chunk_size": 24})
    # a run folder staged before the precision was recorded was staged in fp32: it resumes in fp32 only
    check_manifest(path, {"checkpoint": "a.ckpt", "chunk_size": None, "precision": "fp32"})
    path.write_text('{"checkpoint": "a.ckpt", "chunk_size": null}')
    with pytest.raises(ValueError, match="staging.json.*precision"):
        check_manifest(path, {"checkpoint": "a.ckpt", "chunk_size": None, "precision": "bf16"})


# ------------------------------------------------------------------------------------------------ scoring


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


class _WithObjectIds:
    """The Ref-YouTube-VOS reader plus ``read_object_masks`` (the raw annotation ids, as the Ref-DAVIS17 reader)."""

    def __init__(self, source: RefYTVOSSource) -> None:
        self._source = source
        self.name, self.expressions, self.has_masks = source.name, source.expressions, source.has_masks
        self.expressions_file = source.expressions_file

    def read_frames(self, video, indices):  # noqa: ANN001, ANN201
        return self._source.read_frames(video, indices)

    def read_masks(self, expression, indices):  # noqa: ANN001, ANN201
        return self._source.read_masks(expression, indices)

    def read_object_masks(self, video, indices):  # noqa: ANN001, ANN201
        return np.stack([read_palette_mask(self._source.mask_path(video, i), None) for i in indices])


def _davis_targets(source) -> list[EvalTarget]:
    return [EvalTarget(source, f"anno_{k}") for k in range(4)]


@pytest.mark.parametrize("raw_ids", [False, True])
def test_davis_staging_of_perfect_predictions_scores_one(davis_source, tmp_path: Path, raw_ids: bool) -> None:
    source = _WithObjectIds(davis_source) if raw_ids else davis_source
    staging = StagingArea(tmp_path / "staging")
    predict_to_staging(
        TruthPredictor(davis_source),
        _davis_targets(source),
        staging,
        "palette",
        transform=TRANSFORM,
        collate=COLLATE,
    )
    png = staging.root / "anno_2" / "dogs" / "00015.png"
    with Image.open(png) as img:
        assert img.mode == "P" and img.getpalette() == davis_palette()[: len(img.getpalette())]
        ids = np.asarray(img)
    assert set(np.unique(ids)) == {0, 1, 2, 3}  # palette index = object id
    np.testing.assert_array_equal(ids == 3, expected_mask(DAVIS_VIDEOS["dogs"], 3, 3))
    result = score_predictions(staging.root, source, "davis")
    assert result["jf"] == 1.0 and set(result["annotators"]) == {f"anno_{k}" for k in range(4)}
    assert result["num_objects"] == 5


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
    result = score_predictions(pred, _WithObjectIds(davis_source) if raw_ids else davis_source, "davis")
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
    source = _WithObjectIds(train_source)
    video = train_source.videos[1]  # vid_b: object 1 only
    truth = source.read_object_masks(video, range(video.num_frames))
    void = np.zeros_like(truth, bool)
    void[:, :, :3] = True  # the left 3 columns cover part of the object

    class _WithVoid(_WithObjectIds):
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
    plain = _WithObjectIds(train_source)
    plain.expressions = voided.expressions
    assert score_predictions(pred, plain, "davis")["jf"] < 1.0


def test_palette_writer_needs_one_object_per_expression(train_source, tmp_path: Path) -> None:
    bad = _WithObjectIds(train_source)
    bad.expressions = [replace(train_source.expressions[0], obj_ids=(1, 2))]
    bad.expressions_file = Path("/data/ref-davis/meta_expressions.json")
    with pytest.raises(DatasetError, match="ref-davis/meta_expressions.json.*exactly one object id"):
        predict_to_staging(
            TruthPredictor(train_source),
            [EvalTarget(bad)],
            StagingArea(tmp_path / "s"),
            "palette",
            transform=TRANSFORM,
            collate=COLLATE,
        )


def test_shard_balances_by_cost_and_covers_every_item_once() -> None:
    items = list("abcdefg")
    costs = [1, 50, 2, 2, 30, 30, 1]
    shares = [shard(items, rank, 3, costs) for rank in range(3)]
    assert sorted(x for share in shares for x in share) == items  # each item on exactly one process
    assert all(share == sorted(share, key=items.index) for share in shares)  # in the items' order
    loads = sorted(sum(costs[items.index(x)] for x in share) for share in shares)
    assert loads == [33, 33, 50]  # b alone; e and f apart, the small ones fill in
    assert shard(items, 1, 3) == ["b", "e"]  # without costs: round robin
    with pytest.raises(ValueError, match="2 costs for 7 items"):
        shard(items, 0, 3, [1, 2])


def test_model_predictor_stages_a_video_in_one_call_with_the_per_expression_masks(valid_source, tmp_path):
    from helpers.tiny import make_tiny_model

    model = make_tiny_model()
    with torch.no_grad():  # a random tiny model barely reads the words; make them matter
        model.text_proj.weight.mul_(30)
    predictor = model_predictor(model, "cpu", None)
    calls = []
    real_unit = predictor.predict_unit

    def spy(batches):
        out = real_unit(batches)
        calls.append((batches, out))
        return out

    predictor.predict_unit = spy
    transform = ClipTransform(**model.input_sizes, train=False)

    def tokenizer(texts):  # caption-dependent ids of caption-dependent lengths, right-padded with 3
        rows = [[0, *(4 + ord(c) % 40 for c in text[:8]), 2] for text in texts]
        ids = torch.full((len(rows), max(map(len, rows))), 3)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids, ids != 3

    collate = ReferringCollate(tokenizer)

    def stage(name, predict):
        staging = StagingArea(tmp_path / name)
        predict_to_staging(
            predict, [EvalTarget(valid_source)], staging, "probability", transform=transform, collate=collate
        )
        return {p.relative_to(staging.root): p.read_bytes() for p in staging.root.rglob("*.png")}

    reads = []
    read_frames = valid_source.read_frames
    valid_source.read_frames = lambda video, indices: (
        reads.append(video.video_id) or read_frames(video, indices)
    )
    per_video = stage("video", predictor)
    assert sorted(reads) == sorted(
        {e.video.video_id for e in valid_source.expressions}
    )  # each video read once
    videos = {e.video.video_id for e in valid_source.expressions}
    sizes = [len(batches) for batches, _ in calls]
    assert len(calls) == len(videos) and sum(sizes) == len(valid_source.expressions) and max(sizes) > 1
    for batches, out in calls:  # each expression's logits are its own (as predicted alone), in order
        frames = {"sam_frames": batches[0].sam_frames, "beit_frames": batches[0].beit_frames}
        alone = [real_unit([replace(b, **frames)])[0] for b in batches]
        for logits, reference in zip(out, alone):
            assert (torch.sigmoid(logits) - torch.sigmoid(reference)).abs().max() <= 1e-4
        if len(out) > 1:  # and the expressions of a video differ, so an order mix-up would show
            assert (torch.sigmoid(alone[0]) - torch.sigmoid(alone[1])).abs().max() > 1e-3
    per_expression = stage("expr", lambda batch: real_unit([batch])[0])  # no predict_unit: one call each
    assert per_video.keys() == per_expression.keys() and len(per_video) > 0
    # 8-bit probability PNGs: equal up to a rare one-level rounding step
    for key, data in per_video.items():
        a = np.asarray(Image.open(io.BytesIO(data)), dtype=int)
        b = np.asarray(Image.open(io.BytesIO(per_expression[key])), dtype=int)
        assert np.abs(a - b).max() <= 1, key


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


@pytest.mark.parametrize("name", ["ytvos", "mevis", "davis"])
def test_staged_files_follow_the_benchmark_row(davis_source, tmp_path: Path, name: str) -> None:
    """The ``prediction_file`` column of mpgsam2.benchmarks is where the writers put the PNGs."""
    bench = benchmark(name)
    targets = _davis_targets(davis_source) if bench.annotator_sets else [EvalTarget(davis_source)]
    staging = StagingArea(tmp_path / "staging")
    predict_to_staging(
        TruthPredictor(davis_source),
        targets,
        staging,
        bench.mask_format,
        transform=TRANSFORM,
        collate=COLLATE,
    )
    staged = {p.relative_to(staging.root).as_posix() for p in staging.root.rglob("*.png")}
    expected = {
        bench.prediction_path(annotator=k, video=e.video.video_id, exp_id=e.exp_id, frame=frame)
        for k in (bench.annotators or [None])
        for e in davis_source.expressions
        for frame in e.video.frame_names
    }
    assert staged == expected and len(staged) > 0
