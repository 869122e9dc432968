"""The evaluation writers' test kit: fake predictors (no model), the evaluation transform and collate with a stub
tokenizer, staging a source in one call, a Ref-YouTube-VOS reader with the raw annotation ids (as the Ref-DAVIS17
reader) and the Ref-DAVIS17-like videos of the ``davis_source`` fixture (tests/evaluation/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mpgsam2.data import ClipTransform, ReferringBatch, ReferringCollate, RefYTVOSSource, read_palette_mask
from mpgsam2.evaluation.runner import PerExpression, predict_to_staging
from mpgsam2.evaluation.staging import EvalTarget, StagingArea


class StubTokenizer:
    """Enough of a tokenizer for ReferringCollate (the fake predictors ignore the text)."""

    pad_id = 1

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(len(texts), 3, dtype=torch.long), torch.ones(len(texts), 3, dtype=torch.bool)


COLLATE = ReferringCollate(StubTokenizer())
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


def stage_source(source, run_dir: Path, predictor, mask_format="binary", **kwargs) -> StagingArea:
    """Stages ``source`` into ``<run_dir>/staging`` with the one-expression ``predictor`` (one call per
    expression)."""
    staging = StagingArea(run_dir / "staging")
    predict_to_staging(
        PerExpression(predictor),
        [EvalTarget(source)],
        staging,
        mask_format,
        transform=TRANSFORM,
        collate=COLLATE,
        **kwargs,
    )
    return staging


class WithObjectIds:
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


def davis_targets(source) -> list[EvalTarget]:
    """One target per Ref-DAVIS17 annotator set (``anno_0`` .. ``anno_3``), all of ``source``."""
    return [EvalTarget(source, f"anno_{k}") for k in range(4)]
