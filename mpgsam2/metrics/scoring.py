"""Scoring folders of predicted PNGs against a source with ground truth (any method's output, or ours).

Three layouts, by the benchmark's ``scoring`` (:mod:`mpgsam2.evaluation.benchmarks`, whose rows name the files):

- ``"expressions"`` (Ref-YouTube-VOS, MeViS): ``<pred>/<video>/<exp_id>/<frame>.png``, optionally under a top
  ``Annotations/`` folder (the Ref-YouTube-VOS zip). Any non-zero grey value is foreground. Each expression is
  scored over its frames with :class:`~mpgsam2.metrics.JFMetric` (per-frame ``db_eval_iou`` /
  ``db_eval_boundary``, mean over frames, then over expressions), which is what MeViS ``tools/eval_mevis.py``
  computes for valid_u.
- ``"davis"`` (Ref-DAVIS17): ``<pred>/anno_<k>/<video>/<frame>.png`` palette PNGs (index = object, 0 = background), scored per
  annotator set with the DAVIS-2017 **unsupervised** evaluation (davisvideochallenge/davis2017-evaluation, the
  ``eval_davis.py`` the original runs, spec §3.3): per video, every predicted object (palette index
  1..max, at most 20) against every ground-truth object, per-frame J and F (void pixels, index 255 of the
  ground truth, excluded), Hungarian assignment maximising the mean over frames of (J + F) / 2; then per matched
  ground-truth object the mean over frames; J and F are the means over all objects of the split; J&F their mean.
  The reported numbers are the means over the four annotator sets, given with each set's.
- ``"images"`` (RefCOCO/+/g): ``<pred>/<sample_id>.png``, one per referring expression at its image's size (any
  non-zero grey value is foreground), scored with :class:`~mpgsam2.metrics.ImageIoU`: mIoU, cIoU (summed
  intersections over summed unions) and the J&F of 1-frame videos, the numbers of the in-memory evaluation.

MeViS v2 (the ``mevis_v2`` row, ``no_target_scores``) is scored as v1 plus its no-target scores:
:class:`~mpgsam2.metrics.NoTargetJFMetric` (J&F over all expressions and over target expressions, N-acc, T-acc,
Final; the definitions, their sources and what is inferred are in its docstring), each expression's no-target flag
being the dataset's (:attr:`~mpgsam2.data.ExpressionRecord.no_target`: empty ``anno_id``).

``pred`` may also be a ``.zip`` holding either layout (e.g. the ``submission.zip`` eval.py writes).
A missing PNG is an error naming it (for images: the first missing one and how many are missing) (deviation: ``eval_mevis.py`` scores a missing video as J = F = 0; a
partial folder should not pass silently).
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from mpgsam2.data.errors import DatasetError
from mpgsam2.data.records import ExpressionRecord, VideoRecord
from mpgsam2.data.sources import ReferringVideoSource, image_size
from mpgsam2.evaluation.benchmarks import Benchmark, Scoring, benchmark
from mpgsam2.metrics import ImageIoU, JFMetric, NoTargetJFMetric, boundary_f_measure, region_similarity
from mpgsam2.metrics.jf import DEFAULT_BOUND_TH
from mpgsam2.utils import PIL_ERRORS

__all__ = [
    "DAVIS_MAX_PROPOSALS",
    "PredictionFiles",
    "davis_unsupervised_scores",
    "score_davis",
    "score_expressions",
    "score_images",
    "score_predictions",
]

log = logging.getLogger(__name__)

DAVIS_MAX_PROPOSALS = 20  # parity: davis2017 evaluation refuses more predicted objects per video
DAVIS_VOID = 255


class PredictionFiles:
    """Read access to a folder or ``.zip`` of prediction PNGs by relative path.

    Args:
        root: a folder, or a ``.zip`` file.
        strip_annotations: look inside a top-level ``Annotations/`` folder when there is one (the Ref-YouTube-VOS
            submission layout).
    """

    def __init__(self, root: str | os.PathLike[str], strip_annotations: bool = False) -> None:
        self.root = Path(root)
        self._zip: zipfile.ZipFile | None = None
        self._prefix = ""
        if self.root.is_file() and zipfile.is_zipfile(self.root):
            self._zip = zipfile.ZipFile(self.root)
            names = [n for n in self._zip.namelist() if not n.endswith("/")]
            self._names = set(names)
            if strip_annotations and names and all(n.startswith("Annotations/") for n in names):
                self._prefix = "Annotations/"
        elif self.root.is_dir():
            if strip_annotations and (self.root / "Annotations").is_dir():
                self.root = self.root / "Annotations"
        else:
            raise DatasetError(f"{self.root}: predictions not found (expected a folder of PNGs or a .zip)")

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> PredictionFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def where(self, rel: PurePosixPath) -> str:
        """The path of ``rel`` for messages."""
        if self._zip is not None:
            return f"{self.root}:{self._prefix}{rel}"
        return str(self.root.joinpath(*rel.parts))

    def exists(self, rel: PurePosixPath) -> bool:
        """Whether the file ``rel`` is there."""
        if self._zip is not None:
            return f"{self._prefix}{rel}" in self._names
        return self.root.joinpath(*rel.parts).is_file()

    def has_dir(self, rel: PurePosixPath) -> bool:
        if self._zip is not None:
            head = f"{self._prefix}{rel}/"
            return any(n.startswith(head) for n in self._names)
        return self.root.joinpath(*rel.parts).is_dir()

    def open(self, rel: PurePosixPath) -> Image.Image:
        """The decoded image at ``rel``.

        Raises:
            DatasetError: missing or undecodable, naming the file.
        """
        where = self.where(rel)
        try:
            if self._zip is not None:
                name = f"{self._prefix}{rel}"
                if name not in self._names:
                    raise FileNotFoundError(name)
                img = Image.open(io.BytesIO(self._zip.read(name)))
            else:
                img = Image.open(self.root.joinpath(*rel.parts))
            img.load()
        except FileNotFoundError:
            raise DatasetError(f"{where}: prediction PNG not found") from None
        except PIL_ERRORS as err:
            raise DatasetError(f"{where}: cannot decode the prediction PNG: {err}") from err
        return img


def _check_size(img: Image.Image, size: tuple[int, int], where: str, of: str = "frame") -> None:
    if (img.height, img.width) != tuple(size):
        raise DatasetError(
            f"{where}: prediction is {img.width}x{img.height} (WxH) but its {of} is {size[1]}x{size[0]}"
        )


def _read_foreground(
    files: PredictionFiles, rel: PurePosixPath, size: tuple[int, int], of: str = "frame"
) -> np.ndarray:
    """bool (H, W): any non-zero grey value (as ``cv2.imread(..., IMREAD_GRAYSCALE) != 0`` in eval_mevis.py)."""
    with files.open(rel) as img:
        _check_size(img, size, files.where(rel), of)
        if img.mode not in ("1", "L", "I", "I;16", "F"):
            img = img.convert("L")  # palette and colour PNGs: their grey level, as OpenCV reads them
        return np.asarray(img) != 0


def _read_labels(files: PredictionFiles, rel: PurePosixPath, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W) palette indices of a Ref-DAVIS17 prediction."""
    with files.open(rel) as img:
        where = files.where(rel)
        _check_size(img, size, where)
        if img.mode not in ("P", "L"):
            raise DatasetError(
                f"{where}: prediction is a {img.mode!r} image; Ref-DAVIS17 predictions must be palette ('P') or "
                "single-channel ('L') PNGs whose values are object indices"
            )
        return np.asarray(img).astype(np.uint8, copy=False)


def _frame_count(video: VideoRecord, max_frames: int | None) -> int:
    return video.num_frames if max_frames is None else min(max_frames, video.num_frames)


def _frame_size(source: ReferringVideoSource, video: VideoRecord) -> tuple[int, int]:
    return image_size(video.frame_paths[0])  # the header only


def _require_masks(source: ReferringVideoSource) -> None:
    if not source.has_masks:
        raise DatasetError(
            f"{source.expressions_file}: split {source.name!r} has no public ground truth; "
            "it can only be scored by the benchmark's server (write a submission instead)"
        )


# ------------------------------------------------------------------------------------------------ expressions


def score_expressions(
    pred: str | os.PathLike[str],
    source: ReferringVideoSource,
    *,
    max_frames: int | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
    no_target_scores: bool = False,
) -> dict[str, Any]:
    """J&F of ``<pred>/<video>/<exp_id>/<frame>.png`` over the expressions of ``source`` (see the module docstring).

    Args:
        pred: the folder (or zip); a top-level ``Annotations/`` folder is entered.
        source: the split with ground truth.
        max_frames: score only the first N frames of each video (when only those were predicted).
        bound_th: boundary tolerance of F.
        no_target_scores: also score the no-target expressions (MeViS v2, :class:`NoTargetJFMetric`).

    Returns:
        ``{"j", "f", "jf", "num_expressions"}``; with ``no_target_scores`` also ``"j_target", "f_target",
        "jf_target", "n_acc", "t_acc", "final", "num_target", "num_no_target"``.

    Raises:
        DatasetError: the source has no masks, or a prediction PNG is missing, undecodable or of another size
            than its frame (naming it).
    """
    _require_masks(source)
    # one process scores the whole folder: no synchronisation with other ranks
    metric_class = NoTargetJFMetric if no_target_scores else JFMetric
    metric = metric_class(bound_th=bound_th, sync_on_compute=False)
    sizes: dict[str, tuple[int, int]] = {}
    with PredictionFiles(pred, strip_annotations=True) as files:
        for expr in source.expressions:
            video = expr.video
            n = _frame_count(video, max_frames)
            target = source.read_masks(expr, range(n))
            size = sizes.setdefault(video.video_id, tuple(target.shape[1:]))  # type: ignore[arg-type]
            preds = np.stack(
                [
                    _read_foreground(files, PurePosixPath(video.video_id, expr.exp_id, f"{name}.png"), size)
                    for name in video.frame_names[:n]
                ]
            )
            if no_target_scores:
                metric.update(preds, target, is_target=not getattr(expr, "no_target", False))
            else:
                metric.update(preds, target)
    if not source.expressions:
        raise DatasetError(f"{source.expressions_file}: no expression to score")
    return {**metric.compute(), "num_expressions": len(source.expressions)}


# ------------------------------------------------------------------------------------------------ images


def score_images(
    pred: str | os.PathLike[str],
    source: Any,
    *,
    samples: Sequence[int] | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
) -> dict[str, Any]:
    """RefCOCO/+/g: mIoU, cIoU and J&F of ``<pred>/<sample_id>.png`` over the samples of ``source``.

    Args:
        pred: the folder (or zip) of PNGs (file names: the ``refcoco`` row of :mod:`mpgsam2.evaluation.benchmarks`).
        source: a :class:`~mpgsam2.data.RefCOCOSource` (``sample(i)``, ``read_mask(sample)``, ``len``).
        samples: the sample indices to score (default: all, in order).
        bound_th: boundary tolerance of F.

    Returns:
        ``{"miou", "ciou", "j", "f", "jf", "num_samples"}`` (:class:`~mpgsam2.metrics.ImageIoU`).

    Raises:
        DatasetError: no sample to score; prediction PNGs missing (naming the first and how many are missing,
            before anything is scored); a PNG undecodable or of another size than its image (naming the file and
            both sizes).
    """
    bench = benchmark("refcoco")
    indices = list(range(len(source))) if samples is None else list(samples)
    if not indices:
        raise DatasetError(f"{source.annotation_file}: no sample to score")
    samples_ = [source.sample(i) for i in indices]
    entries = [(s, PurePosixPath(bench.prediction_path(sample_id=s.sample_id))) for s in samples_]
    scores = ImageIoU(bound_th=bound_th)
    with PredictionFiles(pred) as files:
        missing = [rel for _, rel in entries if not files.exists(rel)]
        if missing:
            raise DatasetError(
                f"{files.where(missing[0])}: prediction PNG not found; {len(missing)} of the {len(entries)} "
                f"predictions of {source.name} are missing"
            )
        for sample, rel in entries:
            target = source.read_mask(sample)
            scores.update(_read_foreground(files, rel, (sample.height, sample.width), "image"), target)
    return scores.compute()


# ------------------------------------------------------------------------------------------------ DAVIS


def davis_unsupervised_scores(
    gt_objects: np.ndarray,
    pred_labels: np.ndarray,
    void: np.ndarray | None = None,
    *,
    bound_th: float = DEFAULT_BOUND_TH,
    where: str = "prediction",
) -> tuple[np.ndarray, np.ndarray]:
    """DAVIS-2017 unsupervised scores of one video (``DAVISEvaluation._evaluate_unsupervised``).

    Args:
        gt_objects: bool (N, T, H, W), ground-truth object k in ``gt_objects[k]``.
        pred_labels: uint8 (T, H, W) predicted palette indices; objects 1..max (empty ones included).
        void: bool (T, H, W) pixels excluded from J and F, or None.
        where: names the predictions in errors.

    Returns:
        (J, F): float64 (N,), for each ground-truth object the mean over frames of its matched prediction's
        per-frame J and F (the assignment maximises the sum over objects of mean (J + F) / 2; with fewer
        predictions than objects, empty predictions fill in).

    Raises:
        DatasetError: more than 20 predicted objects (the evaluation's limit), naming ``where``.
    """
    n_gt = gt_objects.shape[0]
    if n_gt == 0:
        return np.zeros(0), np.zeros(0)
    n_pred = int(pred_labels.max()) if pred_labels.size else 0
    if n_pred > DAVIS_MAX_PROPOSALS:
        raise DatasetError(
            f"{where}: palette index {n_pred} found; the DAVIS-2017 unsupervised evaluation allows at most "
            f"{DAVIS_MAX_PROPOSALS} predicted objects per video"
        )
    keep = None if void is None else ~void
    n_rows = max(n_pred, n_gt)  # parity: missing predictions are zero-padded up to the ground-truth count
    num_frames = gt_objects.shape[1]
    j = np.zeros((n_rows, n_gt, num_frames))
    f = np.zeros((n_rows, n_gt, num_frames))
    for r in range(n_rows):
        pred = pred_labels == r + 1
        if keep is not None:
            pred &= keep  # void pixels count for neither mask (gt objects never contain them)
        for g in range(n_gt):
            j[r, g] = region_similarity(pred, gt_objects[g]).numpy()
            f[r, g] = boundary_f_measure(pred, gt_objects[g], bound_th).numpy()
    rows, cols = linear_sum_assignment(-(j.mean(axis=2) + f.mean(axis=2)) / 2)
    # one matched prediction per ground-truth object (the assignment covers every column as n_rows >= n_gt)
    j_obj, f_obj = np.zeros(n_gt), np.zeros(n_gt)
    j_obj[cols] = j[rows, cols].mean(axis=1)
    f_obj[cols] = f[rows, cols].mean(axis=1)
    return j_obj, f_obj


def _davis_ground_truth(
    source: ReferringVideoSource, video: VideoRecord, exprs: Sequence[ExpressionRecord], n: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """(objects bool (N, T, H, W), void bool (T, H, W) or None) of one video."""
    read_ids = getattr(source, "read_object_masks", None)
    if read_ids is not None:
        # parity: davis2017 DAVIS.get_all_masks: index 255 is void, the objects are 1..max of the first frame
        ids = np.asarray(read_ids(video, range(n)))
        void = ids == DAVIS_VOID
        first = ids[0][~void[0]]
        count = int(first.max()) if first.size else 0
        return np.stack([ids == k for k in range(1, count + 1)]) if count else np.zeros(
            (0, *ids.shape), bool
        ), void
    # deviation: a source without the raw annotation ids gives the objects its expressions refer to (no void)
    by_object: dict[int, ExpressionRecord] = {}
    for expr in exprs:
        for obj in expr.obj_ids:
            by_object.setdefault(obj, replace(expr, obj_ids=(obj,)))
    masks = [source.read_masks(by_object[k], range(n)) for k in sorted(by_object)]
    if not masks:
        return np.zeros((0, n, 0, 0), bool), None
    return np.stack(masks), None


def score_davis(
    pred: str | os.PathLike[str],
    source: ReferringVideoSource,
    *,
    annotators: Iterable[int] | None = None,
    max_frames: int | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
) -> dict[str, Any]:
    """Ref-DAVIS17: the DAVIS-2017 unsupervised evaluation of ``<pred>/anno_<k>/`` for each annotator set.

    Args:
        pred: the folder (or zip) holding ``anno_0`` ... ``anno_3``.
        source: the split with ground truth (any annotator view of it: only its videos and masks are used).
            With ``read_object_masks(video, indices)`` (the Ref-DAVIS17 reader) the raw annotation ids give the
            objects and void pixels exactly as the DAVIS toolkit; otherwise the objects its expressions refer to.
        annotators: the annotator sets to score (default: all of Ref-DAVIS17's).
        max_frames: score only the first N frames of each video.

    Returns:
        ``{"j", "f", "jf", "num_objects", "annotators": {"anno_<k>": {"j", "f", "jf"}}}``: the means over the
        annotator sets, and each set's numbers.

    Raises:
        DatasetError: the source has no masks; a missing ``anno_<k>`` folder, or a missing, undecodable,
            non-palette or wrongly sized PNG (naming it); more than 20 predicted objects in a video; an expression
            naming an object that no annotation of its video has (naming the annotation folder and the json).
    """
    _require_masks(source)
    annotators = benchmark("davis").annotators if annotators is None else list(annotators)
    by_video: dict[str, list[ExpressionRecord]] = {}
    for expr in source.expressions:
        by_video.setdefault(expr.video.video_id, []).append(expr)
    if not by_video:
        raise DatasetError(f"{source.expressions_file}: no video to score")
    per_annotator: dict[str, dict[str, float]] = {}
    num_objects = 0
    with PredictionFiles(pred) as files:
        for k in annotators:
            if not files.has_dir(PurePosixPath(f"anno_{k}")):
                raise DatasetError(f"{files.where(PurePosixPath(f'anno_{k}'))}: annotator folder not found")
        j_all: dict[int, list[np.ndarray]] = {k: [] for k in annotators}
        f_all: dict[int, list[np.ndarray]] = {k: [] for k in annotators}
        check_objects_exist = getattr(source, "check_objects_exist", None)
        for exprs in by_video.values():
            video = exprs[0].video
            if check_objects_exist is not None:
                # an expression of an object no annotation has would be scored as one more unmatched proposal
                for expr in exprs:
                    check_objects_exist(expr)
            n = _frame_count(video, max_frames)
            gt, void = _davis_ground_truth(source, video, exprs, n)
            size = tuple(gt.shape[2:]) if gt.shape[0] else _frame_size(source, video)
            num_objects += gt.shape[0]
            for k in annotators:
                folder = PurePosixPath(f"anno_{k}", video.video_id)
                labels = np.stack(
                    [_read_labels(files, folder / f"{name}.png", size) for name in video.frame_names[:n]]  # type: ignore[arg-type]
                )
                j, f = davis_unsupervised_scores(
                    gt, labels, void, bound_th=bound_th, where=files.where(folder)
                )
                j_all[k].append(j)
                f_all[k].append(f)
    if num_objects == 0:
        raise DatasetError(f"{source.expressions_file}: no ground-truth object to score")
    for k in annotators:
        j_mean = float(np.concatenate(j_all[k]).mean())
        f_mean = float(np.concatenate(f_all[k]).mean())
        per_annotator[f"anno_{k}"] = {"j": j_mean, "f": f_mean, "jf": (j_mean + f_mean) / 2}
    j = float(np.mean([v["j"] for v in per_annotator.values()]))
    f = float(np.mean([v["f"] for v in per_annotator.values()]))
    return {"j": j, "f": f, "jf": (j + f) / 2, "num_objects": num_objects, "annotators": per_annotator}


def score_predictions(
    pred: str | os.PathLike[str],
    source: ReferringVideoSource | Any,
    bench: Benchmark | str,
    *,
    max_frames: int | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
    annotators: Iterable[int] | None = None,
    samples: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Scores a folder (or zip) of PNGs against ``source`` as the benchmark ``bench`` is scored:
    :func:`score_expressions` (Ref-YouTube-VOS, MeViS), :func:`score_davis` over ``annotators`` (default: all of
    the benchmark's sets) or :func:`score_images` over ``samples`` (RefCOCO/+/g; default: all). Returns at least
    ``{"j", "f", "jf"}``.

    Raises:
        ValueError: an unknown benchmark, or one scored in no way known here.
    """
    bench = benchmark(bench) if isinstance(bench, str) else bench
    if bench.scoring is Scoring.DAVIS:
        return score_davis(pred, source, annotators=annotators, max_frames=max_frames, bound_th=bound_th)
    if bench.scoring is Scoring.IMAGES:
        return score_images(pred, source, samples=samples, bound_th=bound_th)
    if bench.scoring is not Scoring.EXPRESSIONS:
        raise ValueError(f"{bench.title}: no scorer for {bench.scoring.value!r} predictions")
    # a split with no-target expressions (the synthetic demo's) is scored with them where the row has one release;
    # a versioned row states its protocol (MeViS v1: J&F only, even of a v2 folder)
    split_has_no_target = any(getattr(e, "no_target", False) for e in source.expressions)
    no_target_scores = bench.no_target_scores or (bench.dataset_version is None and split_has_no_target)
    return score_expressions(
        pred, source, max_frames=max_frames, bound_th=bound_th, no_target_scores=no_target_scores
    )
