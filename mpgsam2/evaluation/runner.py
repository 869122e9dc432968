"""The runner: predicts the videos of evaluation targets, one unit (a video's expressions) at a time, and stages
their PNGs. Nothing here imports Lightning or Hydra.

One predictor protocol, :class:`UnitPredictor`: the K collated expressions of one video in, K (T, H, W) logits at
the original frame size out (:class:`ModelPredictor` runs them as one :func:`~mpgsam2.inference.predict_video`
call). A loader item is a whole unit (:class:`UnitBatches`: its staging key and its batches, the video's frames
read and transformed once), so batches are matched to their unit by key, never by position.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mpgsam2.data.batch import ReferringBatch, ReferringItem
from mpgsam2.data.errors import DatasetError
from mpgsam2.data.records import ExpressionRecord
from mpgsam2.data.sources import ReferringVideoSource
from mpgsam2.data.synthetic import davis_palette
from mpgsam2.data.video_dataset import ReferringVideoEvalDataset
from mpgsam2.distributed import shard
from mpgsam2.evaluation.benchmarks import MaskFormat
from mpgsam2.evaluation.masks import PaletteMerger, expression_values, write_frame_pngs
from mpgsam2.evaluation.staging import EvalTarget, StagingArea, Unit
from mpgsam2.inference.predictor import apply_existence, expression_text, predict_video
from mpgsam2.modeling.mpgsam2 import MPGSAM2

__all__ = [
    "ModelPredictor",
    "PerExpression",
    "UnitBatches",
    "UnitPredictor",
    "model_predictor",
    "predict_to_staging",
]

log = logging.getLogger(__name__)


@runtime_checkable
class UnitPredictor(Protocol):
    """What the runner predicts with: a video's K collated expressions (batch size 1 each; the first holds the
    video's frames, the others only their text and meta) -> K (T, H, W) logits at the original frame size, in
    order."""

    def predict_unit(self, batches: Sequence[ReferringBatch]) -> list[Tensor]: ...


class ModelPredictor:
    """Runs ``model`` on ``device`` (eval mode, ``torch.inference_mode``): a :class:`UnitPredictor` over
    :func:`~mpgsam2.inference.predict_video`, a video's expressions in one call.

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


class PerExpression:
    """A :class:`UnitPredictor` from a one-expression predictor (a collated expression -> its (T, H, W) logits):
    one call per expression, each batch given the video's frames.

    Args:
        predict: batch (batch size 1) -> (T, H, W) logits at the original frame size.
    """

    def __init__(self, predict: Callable[[ReferringBatch], Tensor]) -> None:
        self.predict = predict

    def predict_unit(self, batches: Sequence[ReferringBatch]) -> list[Tensor]:
        frames = {"sam_frames": batches[0].sam_frames, "beit_frames": batches[0].beit_frames}
        return [
            self.predict(batch if k == 0 else replace(batch, **frames)) for k, batch in enumerate(batches)
        ]


@dataclass
class UnitBatches:
    """One loader item: a unit's staging key and its expressions collated one per batch (see
    :class:`UnitPredictor`)."""

    unit: Unit
    batches: list[ReferringBatch]


@dataclass(frozen=True)
class _PlannedUnit:
    unit: Unit
    target: EvalTarget
    dataset: ReferringVideoEvalDataset
    indices: list[int]  # the unit's expressions in ``target.source``

    def expressions(self) -> list[ExpressionRecord]:
        return [self.target.source.expressions[i] for i in self.indices]

    def cost(self) -> int:
        """Frames x expressions: what predicting the unit costs, to first order."""
        num_frames = self.target.source.expressions[self.indices[0]].video.num_frames
        return min(num_frames, self.dataset.max_frames or num_frames) * len(self.indices)


class _UnitItems(Dataset):
    """Item u: unit u's key and the items of its expressions, its video read once
    (``ReferringVideoEvalDataset.video_items``)."""

    def __init__(self, units: list[_PlannedUnit]) -> None:
        self.units = units

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, index: int) -> tuple[Unit, list[ReferringItem]]:
        planned = self.units[index]
        return planned.unit, planned.dataset.video_items(planned.indices)


class _UnitCollate:
    """Collates each expression item of one unit (loader batch size 1) on its own, keyed by the unit."""

    def __init__(self, collate: Callable[[list[ReferringItem]], ReferringBatch]) -> None:
        self.collate = collate

    def __call__(self, units: list[tuple[Unit, list[ReferringItem]]]) -> UnitBatches:
        ((unit, items),) = units
        return UnitBatches(unit, [self.collate([item]) for item in items])


def predict_to_staging(
    predict: UnitPredictor,
    targets: Sequence[EvalTarget],
    staging: StagingArea,
    mask_format: MaskFormat | str,
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

    Units are sharded over ``world`` processes balanced by cost, frames x expressions
    (:func:`~mpgsam2.distributed.shard`), so every process must see the same ``targets``; a unit found complete
    (see :class:`StagingArea`) is skipped, so a restarted run only predicts what is missing, with any number of
    processes.

    Args:
        predict: a :class:`UnitPredictor` (e.g. :func:`model_predictor`; :class:`PerExpression` wraps a
            one-expression predictor).
        targets: the sources to predict (a data module's ``eval_targets``).
        staging: where units go.
        mask_format: the PNGs (:class:`~mpgsam2.evaluation.benchmarks.MaskFormat`, see
            :mod:`mpgsam2.evaluation.masks`). For ``palette`` every expression must refer to exactly one object id
            (1..255): its palette index.
        transform: the evaluation ``ClipTransform`` (``train=False``).
        collate: batches one item (``ReferringCollate`` with the model's tokenizer).
        max_frames: predict only the first N frames of each video (debugging; None = all, the protocol).
        num_workers: DataLoader worker processes.
        rank / world: this process and the number of processes.
        palette: flat RGB palette of the ``palette`` PNGs (default: the DAVIS palette).

    Returns:
        The units written by this call.

    Raises:
        DatasetError: an unsafe video id, expression id or frame name (naming the source's expressions file),
            or a palette expression without exactly one object id in 1..255.
        ValueError: unknown ``mask_format``, a batch that is not of its unit's expression, or a prediction of the
            wrong shape or count.
    """
    try:
        mask_format = MaskFormat(mask_format)
    except ValueError:
        raise ValueError(
            f"mask_format must be 'binary', 'probability' or 'palette', got {mask_format!r}"
        ) from None
    palette = palette or davis_palette()
    plan: list[_PlannedUnit] = []
    for target in targets:
        dataset = ReferringVideoEvalDataset(target.source, transform, max_frames, with_masks=False)
        plan.extend(_PlannedUnit(unit, target, dataset, indices) for unit, indices in target.units())
    units = [p.unit for p in plan]
    if len(set(units)) != len(units):
        raise ValueError("two targets write the same staging folder; give each a distinct `folder`")
    mine = shard(plan, rank, world, [p.cost() for p in plan])
    pending = {p.unit: p for p in mine if not staging.is_done(p.unit)}
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
    # one loader item per video: its frames read and transformed once, whatever its number of expressions
    loader = DataLoader(
        _UnitItems(list(pending.values())),
        batch_size=1,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_UnitCollate(collate),
    )
    written = []
    for item in loader:
        planned = pending[item.unit]
        exprs = planned.expressions()
        _check_batches(item, exprs)
        tmp = staging.begin(item.unit)  # a crash from here on leaves only <staging>.partial/<unit>
        logits = predict.predict_unit(item.batches)
        if len(logits) != len(exprs):
            raise ValueError(
                f"unit {'/'.join(item.unit)}: {len(logits)} predictions for {len(exprs)} expressions"
            )
        _write_unit(tmp, planned.target.source, exprs, item.batches, logits, mask_format, palette)
        staging.commit(item.unit)
        written.append(item.unit)
    return written


def _check_batches(item: UnitBatches, exprs: list[ExpressionRecord]) -> None:
    keys = [(b.meta[0].video, b.meta[0].exp_id) for b in item.batches]
    wanted = [(e.video.video_id, e.exp_id) for e in exprs]
    if keys != wanted:
        raise ValueError(f"unit {'/'.join(item.unit)}: batches of {keys}, expected the expressions {wanted}")


def _write_unit(
    tmp: Path,
    source: ReferringVideoSource,
    exprs: list[ExpressionRecord],
    batches: list[ReferringBatch],
    logits: list[Tensor],
    mask_format: MaskFormat,
    palette: list[int],
) -> None:
    """Encodes a unit's predictions (``mask_format``) into PNGs in its partial folder ``tmp``."""
    merger: PaletteMerger | None = None
    frame_names: list[str] = []
    for expr, batch, expr_logits in zip(exprs, batches, logits):
        meta = batch.meta[0]
        frame_names = list(meta.frame_names)
        shape = (len(frame_names), *meta.orig_size)
        if tuple(expr_logits.shape) != shape:
            raise ValueError(
                f"prediction for video {expr.video.video_id!r} expression {expr.exp_id!r} has shape "
                f"{tuple(expr_logits.shape)}, expected (T, H, W) = {shape}"
            )
        probs = torch.sigmoid(expr_logits.float())
        if mask_format.per_expression:
            exp_dir = tmp / expr.exp_id
            exp_dir.mkdir()
            write_frame_pngs(exp_dir, frame_names, expression_values(mask_format, probs))
            continue
        if merger is None:
            merger = PaletteMerger(shape)
        merger.add(_palette_label(source, expr), probs)
    if merger is not None:
        # files are named by frame name; the original uses %05d of the index, the same names for DAVIS
        write_frame_pngs(tmp, frame_names, merger.result(), palette)


def _palette_label(source: ReferringVideoSource, expr: ExpressionRecord) -> int:
    # The original writes the object's position in the expression order + 1, which is its obj_id for the
    # converter's ids 1..N; the unsupervised evaluation matches objects to the ground truth either way.
    if len(expr.obj_ids) != 1 or not 1 <= expr.obj_ids[0] <= 255:
        raise DatasetError(
            f"{source.expressions_file}: video {expr.video.video_id!r}, expression {expr.exp_id!r}: a palette "
            f"(Ref-DAVIS17) prediction needs exactly one object id in 1..255, found {list(expr.obj_ids)}"
        )
    return expr.obj_ids[0]
