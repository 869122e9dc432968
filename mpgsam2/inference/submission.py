"""Leaderboard outputs: per-dataset post-processing, resumable per-video staging, sharding and the zips.

Predictions are written per *unit* (one video, or one video of one Ref-DAVIS17 annotator set) into a staging
folder. A unit is first written into ``<staging>.partial/<unit>`` and renamed to ``<staging>/<unit>`` once all
of its PNGs are on disk, so after an interruption the finished units are skipped and a half-written one is redone
(its partial folder is cleared first). The zip is written under a temporary name and renamed, so it exists only
when complete. Nothing here imports Lightning or Hydra.

Staging layouts (the same as the folders a user may score with :func:`~mpgsam2.metrics.scoring.score_predictions`;
the ``prediction files`` column of :mod:`mpgsam2.benchmarks`):

- Ref-YouTube-VOS and MeViS (v1 and v2): ``<staging>/<video>/<exp_id>/<frame>.png`` (mode ``L``);
- Ref-DAVIS17: ``<staging>/anno_<k>/<video>/<frame>.png`` (mode ``P``, DAVIS palette, one index per object);
- RefCOCO/+/g: ``<staging>/<sample_id>.png`` (mode ``L``, 0/255), each file its own unit: written into
  ``<staging>.partial/`` and renamed (:meth:`StagingArea.write_png`, :mod:`mpgsam2.inference.images`).

Post-processing (spec §1.8, §3), from the logits at the original frame size:

- ``"binary"`` (Ref-YouTube-VOS, MeViS v2): ``sigmoid > 0.5`` -> 255, else 0 (MeViS v2: an expression judged
  absent is all 0 on every frame, a full set of PNGs all the same);
- ``"probability"`` (MeViS v1): ``p = sigmoid``, ``p < 0.5`` -> 0, else ``p * 255`` truncated to uint8 (any non-zero
  pixel is foreground for the scorer);
- ``"palette"`` (Ref-DAVIS17): the objects' probabilities (zeroed below 0.5) stacked over a constant background
  plane of 0.1, argmax -> palette index (the object id; 0 = background).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from mpgsam2.benchmarks import Benchmark, benchmark
from mpgsam2.data.batch import ReferringBatch, ReferringItem
from mpgsam2.data.errors import DatasetError
from mpgsam2.data.records import ExpressionRecord, validate_path_component, validate_video_id
from mpgsam2.data.sources import ReferringVideoSource
from mpgsam2.data.synthetic import davis_palette
from mpgsam2.data.video_dataset import ReferringVideoEvalDataset
from mpgsam2.inference.predictor import apply_existence, expression_text, predict_video
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.utils import write_json_atomic

__all__ = [
    "EvalTarget",
    "ModelPredictor",
    "PaletteMerger",
    "StagingArea",
    "barrier",
    "binary_masks",
    "check_manifest",
    "model_predictor",
    "predict_to_staging",
    "probability_masks",
    "rank_and_world",
    "shard",
    "submission_entries",
    "write_submission_zip",
    "write_zip",
]

log = logging.getLogger(__name__)

DAVIS_BACKGROUND = 0.1  # parity: inference_davis.py's constant background plane
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same predictions give the same zip bytes

Unit = tuple[str, ...]  # a staging sub-path: (video,) or (annotator folder, video)
# one collated evaluation batch (batch size 1) -> (T, H, W) logits at the original frame size
Predictor = Callable[[ReferringBatch], Tensor]


# ------------------------------------------------------------------------------------------------ post-processing


def binary_masks(probs: Tensor) -> np.ndarray:
    """Ref-YouTube-VOS PNG values: (T, H, W) probabilities -> uint8 (T, H, W), 255 where ``p > 0.5``, else 0.

    parity: ``inference_ytvos.py`` thresholds the sigmoid (not the logit) with ``> 0.5``.
    """
    return ((probs > 0.5).to(torch.uint8) * 255).cpu().numpy()


def probability_masks(probs: Tensor) -> np.ndarray:
    """MeViS PNG values: (T, H, W) probabilities -> uint8 (T, H, W), 0 where ``p < 0.5``, else ``p * 255``.

    parity: ``inference_mevis.py`` zeroes ``p < 0.5`` and saves ``Image.fromarray(p * 255).convert("L")``, which
    truncates towards zero (0.5 -> 127) and clips to [0, 255].
    """
    p = probs.float().cpu().numpy()
    p = np.where(p < 0.5, np.float32(0.0), p) * np.float32(255.0)
    return np.clip(p, 0, 255).astype(np.uint8)


class PaletteMerger:
    """Merges the objects of one video into palette indices, as ``inference_davis.py``: the probabilities (zeroed
    below 0.5) are stacked after a constant background plane of 0.1 and the argmax taken.

    Objects are added one at a time (memory: two (T, H, W) arrays, not one per object). A pixel goes to the first
    plane holding its maximum (background first, then objects in the order added), as ``torch.argmax`` does.

    Args:
        shape: (T, H, W).
    """

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.best = torch.full(shape, DAVIS_BACKGROUND, dtype=torch.float32)
        self.labels = torch.zeros(shape, dtype=torch.uint8)
        self.added: list[int] = []

    def add(self, label: int, probs: Tensor) -> None:
        """Adds object ``label`` (1..255) with probabilities (T, H, W)."""
        if not 1 <= label <= 255:
            raise ValueError(f"palette label {label} is outside 1..255")
        if label in self.added:
            raise ValueError(f"palette label {label} was added twice")
        if tuple(probs.shape) != tuple(self.best.shape):
            raise ValueError(
                f"object probabilities {tuple(probs.shape)} != video shape {tuple(self.best.shape)}"
            )
        p = probs.float().cpu()
        p = torch.where(p < 0.5, torch.zeros_like(p), p)
        wins = p > self.best  # strict: ties stay with the earlier plane (argmax returns the first maximum)
        self.best = torch.where(wins, p, self.best)
        self.labels[wins] = label
        self.added.append(label)

    def result(self) -> np.ndarray:
        """uint8 (T, H, W) palette indices (0 = background)."""
        return self.labels.numpy()


def _save_png(path: Path, values: np.ndarray, palette: list[int] | None = None) -> None:
    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8), mode="L")
    if palette is not None:
        img.putpalette(palette)  # -> mode "P"
    img.save(path, format="PNG")


# ------------------------------------------------------------------------------------------------ distribution


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) from ``torch.distributed`` when it is initialised (torchrun, Lightning DDP), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """``torch.distributed.barrier()`` when initialised; a no-op in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard(items: Sequence[Any], rank: int, world: int, costs: Sequence[float] | None = None) -> list[Any]:
    """This process's share of ``items``, in their order.

    Without ``costs``: round robin (``items[rank], items[rank + world], ...``). With ``costs`` (one per item, e.g.
    frames x expressions of a video): balanced by cost, each item in turn from the most costly (ties by position)
    going to the process with the least cost so far (ties to the lowest rank), the same on every process.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid rank {rank} of world size {world}")
    if costs is None:
        return list(items[rank::world])
    if len(costs) != len(items):
        raise ValueError(f"{len(costs)} costs for {len(items)} items")
    load = [0.0] * world
    mine = []
    for i in sorted(range(len(items)), key=lambda i: (-costs[i], i)):
        owner = min(range(world), key=lambda r: (load[r], r))
        load[owner] += costs[i]
        if owner == rank:
            mine.append(i)
    return [items[i] for i in sorted(mine)]


# ------------------------------------------------------------------------------------------------ staging


class StagingArea:
    """Per-unit folders that appear only when complete.

    Args:
        root: the staging folder (``<run dir>/staging``). Partial units live in the sibling ``<root>.partial``, so
            no video id can collide with them.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.partial_root = self.root.with_name(self.root.name + ".partial")

    def final_dir(self, unit: Unit) -> Path:
        return self.root.joinpath(*unit)

    def partial_dir(self, unit: Unit) -> Path:
        return self.partial_root.joinpath(*unit)

    def is_done(self, unit: Unit) -> bool:
        """Whether ``unit`` was completed (its final folder exists)."""
        return self.final_dir(unit).is_dir()

    def begin(self, unit: Unit) -> Path:
        """A fresh, empty partial folder for ``unit`` (a leftover of an interrupted run is removed first)."""
        tmp = self.partial_dir(unit)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, unit: Unit) -> Path:
        """Renames the partial folder of ``unit`` to its final place (atomic on one file system)."""
        final = self.final_dir(unit)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.partial_dir(unit), final)
        return final

    def has_file(self, name: str) -> bool:
        """Whether the single-file unit ``name`` (a relative path) was completed."""
        return self.root.joinpath(name).is_file()

    def write_png(self, name: str, values: np.ndarray, palette: list[int] | None = None) -> Path:
        """Writes the single-file unit ``<root>/<name>`` (uint8 (H, W) values, mode ``L`` or, with ``palette``,
        ``P``): into ``<root>.partial/<name>`` first, then renamed, so it appears whole or not at all."""
        tmp, final = self.partial_root.joinpath(name), self.root.joinpath(name)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        _save_png(tmp, values, palette)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        return final

    def remove_partials(self) -> None:
        """Deletes ``<root>.partial`` (call once every process is done)."""
        if self.partial_root.exists():
            shutil.rmtree(self.partial_root)

    def clear(self) -> None:
        """Deletes every staged unit, finished or partial (a restart from scratch)."""
        self.remove_partials()
        if self.root.exists():
            shutil.rmtree(self.root)


def _check_ids(source: ReferringVideoSource, expr: ExpressionRecord) -> None:
    # The readers and records validate already; a writer must not trust that (any source can be plugged in).
    where = str(source.expressions_file)
    video = expr.video
    validate_video_id(video.video_id, where)
    validate_path_component(expr.exp_id, f"video {video.video_id!r}: expression id", where)
    for name in video.frame_names:
        validate_path_component(name, f"video {video.video_id!r}: frame name", where)


@dataclass(frozen=True)
class EvalTarget:
    """A source to predict and the staging sub-folder its units go to.

    Attributes:
        source: the split (its expressions in source order).
        folder: staging sub-folder (``"anno_0"`` for Ref-DAVIS17 annotator set 0), or None for the staging root.
    """

    source: ReferringVideoSource
    folder: str | None = None

    def units(self) -> list[tuple[Unit, list[int]]]:
        """(unit, expression indices) per video, videos in order of first appearance, ids validated."""
        groups: dict[str, list[int]] = {}
        for i, expr in enumerate(self.source.expressions):
            _check_ids(self.source, expr)
            groups.setdefault(expr.video.video_id, []).append(i)
        prefix: Unit = (
            () if self.folder is None else (validate_path_component(self.folder, "staging folder"),)
        )
        return [((*prefix, vid), indices) for vid, indices in groups.items()]


# ------------------------------------------------------------------------------------------------ inference


class ModelPredictor:
    """Runs ``model`` on ``device`` (eval mode, ``torch.inference_mode``); a :data:`Predictor` that also predicts
    a whole video's expressions at once (:meth:`predict_unit`, which :func:`predict_to_staging` prefers).

    Args:
        chunk_size: frames per independent chunk (MeViS: 24, spec §3.2), None for the whole video.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see :func:`mpgsam2.inference.predict_video`).
        compile: run the image encoder and memory attention through ``torch.compile`` (same function).
        existence_threshold: empty every frame of an expression judged absent
            (:func:`~mpgsam2.inference.apply_existence`); None: no such decision (the original's protocol).
    """

    def __init__(
        self,
        model: MPGSAM2,
        device: str | torch.device,
        chunk_size: int | None,
        precision: str = "fp32",
        compile: bool = False,
        existence_threshold: float | None = None,
    ) -> None:
        self.model = model.eval()
        self.device = device
        self.chunk_size = chunk_size
        self.precision = precision
        self.compile = compile
        self.existence_threshold = existence_threshold

    def __call__(self, batch: ReferringBatch) -> Tensor:
        """One collated expression (batch size 1) -> its (T, H, W) logits."""
        return self.predict_unit([batch])[0]

    def predict_unit(self, batches: Sequence[ReferringBatch]) -> list[Tensor]:
        """The K collated expressions (batch size 1 each) of one video -> K (T, H, W) logits, in one
        :func:`predict_video` call over the first batch's frames (the others' frames are not read)."""
        first = batches[0]
        with torch.inference_mode():
            predictions = predict_video(
                self.model,
                first.sam_frames[0].to(self.device),
                first.beit_frames[0].to(self.device),
                [tuple(x.to(self.device) for x in expression_text(b)) for b in batches],
                first.meta[0].orig_size,
                chunk_size=self.chunk_size,
                precision=self.precision,
                compile=self.compile,
            )
        return [apply_existence(p, self.existence_threshold).logits for p in predictions]


def model_predictor(
    model: MPGSAM2,
    device: str | torch.device,
    chunk_size: int | None,
    precision: str = "fp32",
    compile: bool = False,
    existence_threshold: float | None = None,
) -> ModelPredictor:
    """A :class:`ModelPredictor` (see there)."""
    return ModelPredictor(model, device, chunk_size, precision, compile, existence_threshold)


def predict_to_staging(
    predict: Predictor,
    targets: Sequence[EvalTarget],
    staging: StagingArea,
    mask_format: str,
    *,
    transform: Any,
    collate: Callable[[list[ReferringItem]], ReferringBatch],
    max_frames: int | None = None,
    num_workers: int = 0,
    rank: int = 0,
    world: int = 1,
    palette: list[int] | None = None,
) -> list[Unit]:
    """Predicts this process's share of the units that are not done yet and stages them.

    Units are sharded over ``world`` processes balanced by cost, frames x expressions (:func:`shard`), so every
    process must see the same ``targets``; a unit found complete (see :class:`StagingArea`) is skipped, so a restarted run only predicts
    what is missing, with any number of processes.

    Args:
        predict: one collated batch (batch size 1) -> (T, H, W) logits at the original size (e.g.
            :func:`model_predictor`).
        targets: the sources to predict.
        staging: where units go.
        mask_format: ``"binary"``, ``"probability"`` or ``"palette"`` (see the module docstring). For
            ``"palette"`` every expression must refer to exactly one object id (1..255): its palette index.
        transform: the evaluation ``ClipTransform`` (``train=False``).
        collate: batches one item (``ReferringCollate`` with the model's tokenizer).
        max_frames: predict only the first N frames of each video (debugging; None = all, the protocol).
        num_workers: DataLoader worker processes.
        rank / world: this process and the number of processes.
        palette: flat RGB palette of the ``"palette"`` PNGs (default: the DAVIS palette).

    Returns:
        The units written by this call.

    Raises:
        DatasetError: an unsafe video id, expression id or frame name (naming the source's expressions file),
            or a palette expression without exactly one object id in 1..255.
        ValueError: unknown ``mask_format``, or a prediction of the wrong shape.
    """
    if mask_format not in ("binary", "probability", "palette"):
        raise ValueError(f"mask_format must be 'binary', 'probability' or 'palette', got {mask_format!r}")
    palette = palette or davis_palette()
    datasets: list[Dataset] = []
    plan: list[tuple[Unit, EvalTarget, list[int], int]] = []  # (unit, target, expression indices, offset)
    offset = 0
    for target in targets:
        dataset = ReferringVideoEvalDataset(target.source, transform, max_frames, with_masks=False)
        plan.extend((unit, target, indices, offset) for unit, indices in target.units())
        datasets.append(dataset)
        offset += len(dataset)
    units = [p[0] for p in plan]
    if len(set(units)) != len(units):
        raise ValueError("two targets write the same staging folder; give each a distinct `folder`")
    costs = [_unit_cost(target, indices, max_frames) for _, target, indices, _ in plan]
    pending = [p for p in shard(plan, rank, world, costs) if not staging.is_done(p[0])]
    log.info(
        "rank %d/%d: %d of %d units to predict (%d done)",
        rank,
        world,
        len(pending),
        len(units),
        sum(staging.is_done(u) for u in units),
    )
    if not pending:
        return []
    batches: Iterator[ReferringBatch]
    if getattr(predict, "predict_unit", None) is not None:
        # one loader item per video: its frames read and transformed once, whatever its number of expressions
        by_target = {id(t): d for t, d in zip(targets, datasets)}
        units_data = _VideoUnits([(by_target[id(target)], indices) for _, target, indices, _ in pending])
        unit_loader = DataLoader(
            units_data, batch_size=1, shuffle=False, num_workers=num_workers, collate_fn=_UnitCollate(collate)
        )
        batches = (batch for unit_batches in unit_loader for batch in unit_batches)
    else:
        order = [offset + i for _, _, indices, offset in pending for i in indices]
        loader = DataLoader(
            Subset(ConcatDataset(datasets), order),
            batch_size=1,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate,
        )
        batches = iter(loader)
    written = []
    for unit, target, indices, _ in pending:
        _write_unit(predict, batches, staging, unit, target, indices, mask_format, palette)
        written.append(unit)
    return written


def _unit_cost(target: EvalTarget, indices: list[int], max_frames: int | None) -> int:
    """Frames x expressions: what predicting a unit costs, to first order."""
    num_frames = target.source.expressions[indices[0]].video.num_frames
    return min(num_frames, max_frames or num_frames) * len(indices)


class _VideoUnits(Dataset):
    """Item u: the items of unit u's expressions, its video read once (``ReferringVideoEvalDataset.video_items``)."""

    def __init__(self, units: list[tuple[ReferringVideoEvalDataset, list[int]]]) -> None:
        self.units = units

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, index: int) -> list[ReferringItem]:
        dataset, indices = self.units[index]
        return dataset.video_items(indices)


class _UnitCollate:
    """Collates each expression item of one unit (loader batch size 1) on its own: a list of batches."""

    def __init__(self, collate: Callable[[list[ReferringItem]], ReferringBatch]) -> None:
        self.collate = collate

    def __call__(self, units: list[list[ReferringItem]]) -> list[ReferringBatch]:
        (items,) = units
        return [self.collate([item]) for item in items]


def _predict_unit(
    predict: Predictor, batches: Iterator[ReferringBatch], target: EvalTarget, indices: list[int]
) -> Iterator[tuple[ExpressionRecord, ReferringBatch, Tensor]]:
    """(expression, batch, logits) for each expression of a unit: the whole video in one call when ``predict``
    can (``predict_unit``), else one call per expression."""
    unit_predict = getattr(predict, "predict_unit", None)
    exprs = [target.source.expressions[i] for i in indices]
    if unit_predict is None:
        for expr in exprs:
            batch = _checked(next(batches), expr)
            yield expr, batch, predict(batch)
        return
    collected = []
    for k, expr in enumerate(exprs):
        batch = _checked(next(batches), expr)
        if k:  # the video's frames are the same in every item: keep one copy
            batch = replace(batch, sam_frames=torch.empty(0), beit_frames=torch.empty(0))
        collected.append(batch)
    yield from zip(exprs, collected, unit_predict(collected))


def _checked(batch: ReferringBatch, expr: ExpressionRecord) -> ReferringBatch:
    meta = batch.meta[0]
    assert (meta.video, meta.exp_id) == (expr.video.video_id, expr.exp_id), (meta, expr)
    return batch


def _write_unit(
    predict: Predictor,
    batches: Iterator[ReferringBatch],
    staging: StagingArea,
    unit: Unit,
    target: EvalTarget,
    indices: list[int],
    mask_format: str,
    palette: list[int],
) -> None:
    tmp = staging.begin(unit)
    merger: PaletteMerger | None = None
    frame_names: list[str] = []
    for expr, batch, logits in _predict_unit(predict, batches, target, indices):
        meta = batch.meta[0]
        frame_names = list(meta.frame_names)
        shape = (len(frame_names), *meta.orig_size)
        if tuple(logits.shape) != shape:
            raise ValueError(
                f"prediction for video {expr.video.video_id!r} expression {expr.exp_id!r} has shape "
                f"{tuple(logits.shape)}, expected (T, H, W) = {shape}"
            )
        probs = torch.sigmoid(logits.float())
        if mask_format == "palette":
            if merger is None:
                merger = PaletteMerger(shape)
            merger.add(_palette_label(target.source, expr), probs)
            continue
        values = binary_masks(probs) if mask_format == "binary" else probability_masks(probs)
        exp_dir = tmp / expr.exp_id
        exp_dir.mkdir()
        for name, frame in zip(frame_names, values):
            _save_png(exp_dir / f"{name}.png", frame)
    if merger is not None:
        # files are named by frame name; the original uses %05d of the index, the same names for DAVIS
        for name, frame in zip(frame_names, merger.result()):
            _save_png(tmp / f"{name}.png", frame, palette)
    staging.commit(unit)


def _palette_label(source: ReferringVideoSource, expr: ExpressionRecord) -> int:
    # The original writes the object's position in the expression order + 1, which is its obj_id for the
    # converter's ids 1..N; the unsupervised evaluation matches objects to the ground truth either way.
    if len(expr.obj_ids) != 1 or not 1 <= expr.obj_ids[0] <= 255:
        raise DatasetError(
            f"{source.expressions_file}: video {expr.video.video_id!r}, expression {expr.exp_id!r}: a palette "
            f"(Ref-DAVIS17) prediction needs exactly one object id in 1..255, found {list(expr.obj_ids)}"
        )
    return expr.obj_ids[0]


# ------------------------------------------------------------------------------------------------ zips


def write_zip(path: str | os.PathLike[str], entries: Iterable[tuple[str, Path]]) -> Path:
    """Writes ``(name in the archive, file)`` entries to ``path`` via ``<path>.tmp`` and a rename.

    Entries are sorted by name and carry a fixed time stamp and mode, so equal files give equal zip bytes.
    PNGs are stored without recompression (they are compressed already).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, file in sorted(entries):
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_STORED
                zf.writestr(info, Path(file).read_bytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def submission_entries(
    staging: StagingArea, targets: Sequence[EvalTarget], bench: Benchmark | str
) -> list[tuple[str, Path]]:
    """The files of a Ref-YouTube-VOS / MeViS submission, one per (video, expression, frame) of ``targets``.

    Raises:
        ValueError: the benchmark has no submission server (Ref-DAVIS17 and RefCOCO are scored locally).
        FileNotFoundError: a unit or PNG is missing from the staging folder (naming it).
    """
    bench = benchmark(bench) if isinstance(bench, str) else bench
    if bench.zip_prefix is None:
        raise ValueError(f"{bench.title} has no submission server: it is scored locally")
    entries = []
    for target in targets:
        for unit, indices in target.units():
            folder = staging.final_dir(unit)
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: video not predicted (staging incomplete)")
            for i in indices:
                expr = target.source.expressions[i]
                for name in expr.video.frame_names:
                    file = folder / expr.exp_id / f"{name}.png"
                    if not file.is_file():
                        raise FileNotFoundError(f"{file}: prediction missing from the staging folder")
                    entries.append((bench.zip_prefix + "/".join((*unit, expr.exp_id, f"{name}.png")), file))
    return entries


def write_submission_zip(
    path: str | os.PathLike[str], staging: StagingArea, targets: Sequence[EvalTarget], bench: Benchmark | str
) -> Path:
    """:func:`submission_entries` zipped to ``path`` (atomically, see :func:`write_zip`)."""
    path = write_zip(path, submission_entries(staging, targets, bench))
    log.info("submission written: %s", path)
    return path


# settings added to the manifest later -> the value every earlier run used
_UNRECORDED_SETTINGS = {"precision": "fp32", "existence_threshold": None}


def check_manifest(
    path: str | os.PathLike[str],
    manifest: Mapping[str, Any],
    restart: bool = False,
    staging: StagingArea | None = None,
) -> None:
    """Records what a staging folder holds (the weights' content hash, the data and the settings), or checks a
    restarted run against it.

    Args:
        path: the manifest file beside the staging folder.
        manifest: what this run would stage.
        restart: when the staged predictions are of another evaluation, discard them (``staging``'s videos) and
            start over instead of refusing.

    Raises:
        ValueError: naming ``path``, when an earlier run staged predictions of another model (other weights,
            even under the same file name), dataset or setting there and ``restart`` is off (resuming would mix
            them).
    """
    path = Path(path)
    current = json.loads(json.dumps(manifest, sort_keys=True, default=str))
    if path.is_file():
        # a manifest written before a setting was recorded staged it at the only value it then had
        previous = {**_UNRECORDED_SETTINGS, **json.loads(path.read_text())}
        now = {**_UNRECORDED_SETTINGS, **current}
        if previous == now:
            return
        diff = {k: (previous.get(k), now.get(k)) for k in set(previous) | set(now)}
        diff = {k: v for k, v in diff.items() if v[0] != v[1]}
        if not restart:
            raise ValueError(
                f"{path}: this run folder holds predictions of another evaluation ({diff}, as (staged, now)); "
                "use a new run folder, or restart=true to discard them and start over"
            )
        log.warning("%s: discarding the staged predictions of another evaluation (%s)", path, sorted(diff))
        if staging is not None:
            staging.clear()
    write_json_atomic(path, current)
