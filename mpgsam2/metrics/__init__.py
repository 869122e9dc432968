"""Evaluation metrics: J&F (region similarity J, boundary F-measure F) for referring video segmentation, and
mIoU / cIoU for referring image segmentation.

``JFMetric`` is a torchmetrics ``Metric`` that scores one expression per (T, H, W) mask pair and averages
per-expression means, as the MeViS and DAVIS-2017 evaluations do; ``NoTargetJFMetric`` adds MeViS v2's scores of
expressions that refer to nothing (N-acc, T-acc, Final); the functions below are the per-frame scores they are
built on (definitions in :mod:`mpgsam2.metrics.jf`). ``ImageIoU`` accumulates the RefCOCO scores
(the one implementation both the in-memory evaluation and the scoring of a folder of PNGs use).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from mpgsam2.metrics.jf import (
    DEFAULT_BOUND_TH,
    MaskLike,
    _as_bool_numpy,
    _boundary_f_measure_np,
    _check_bound_th,
    _region_similarity_np,
    boundary_f_measure,
    boundary_tolerance,
    disk,
    region_similarity,
    seg_to_boundary,
)

__all__ = [
    "ImageIoU",
    "JFMetric",
    "NoTargetJFMetric",
    "boundary_f_measure",
    "boundary_tolerance",
    "disk",
    "region_similarity",
    "seg_to_boundary",
]


class JFMetric(Metric):
    """J&F over expressions, following the MeViS / DAVIS-2017 protocol.

    For each expression, J (region IoU) and F (boundary F-measure with tolerance ``bound_th`` x image
    diagonal) are computed per frame as the official ``db_eval_iou`` / ``db_eval_boundary``
    (davisvideochallenge/davis2017-evaluation ``davis2017/metrics.py``), then averaged over the frames of
    that expression. ``compute()`` averages the per-expression means over all expressions and returns
    ``{"j", "f", "jf"}`` with ``jf = (j + f) / 2``, as Python floats in [0, 1].

    States are sums (of per-expression mean J, of per-expression mean F, and the number of expressions)
    reduced with ``"sum"``, so a DDP sync gives exactly the single-process result (up to float64
    summation order). They are float64; do not cast the metric to a lower precision.

    Args:
        bound_th: boundary tolerance, a fraction of the image diagonal if < 1, else pixels.
        per_expression: also keep each expression's J and F (``"cat"`` states); ``compute()`` then adds
            ``"j_per_expression"`` and ``"f_per_expression"`` lists, in update order (rank by rank after a
            DDP sync, not dataset order).
        **kwargs: passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    j_sum: Tensor
    f_sum: Tensor
    num_expressions: Tensor

    def __init__(
        self, bound_th: float = DEFAULT_BOUND_TH, per_expression: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        _check_bound_th(bound_th)
        self.bound_th = bound_th
        self.per_expression = per_expression
        zero = torch.tensor(0.0, dtype=torch.float64)
        self.add_state("j_sum", zero.clone(), dist_reduce_fx="sum")
        self.add_state("f_sum", zero.clone(), dist_reduce_fx="sum")
        self.add_state("num_expressions", zero.clone(), dist_reduce_fx="sum")
        if per_expression:
            self.add_state("j_per_expression", [], dist_reduce_fx="cat")
            self.add_state("f_per_expression", [], dist_reduce_fx="cat")
        # The metric dtype is what torchmetrics gives a rank with no updates as its empty "cat" state;
        # float64 matches the other ranks' values so that the all-gather works.
        self.set_dtype(torch.float64)

    def update(self, preds: MaskLike, target: MaskLike) -> None:
        """Add expressions.

        Args:
            preds: (T, H, W) masks of one expression, or (B, T, H, W) for B expressions. Bool, or any dtype
                where non-zero is foreground (as the MeViS evaluation reads its PNGs).
            target: ground truth of the same shape.
        """
        self._score(preds, target)

    def _score(
        self, preds: MaskLike, target: MaskLike
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Adds the expressions; returns them as bool (B, T, H, W) arrays and their J and F, float64 (B,)."""
        if tuple(preds.shape) != tuple(target.shape):
            raise ValueError(
                f"JFMetric.update: preds and target must have the same shape, got preds "
                f"{tuple(preds.shape)} and target {tuple(target.shape)}"
            )
        if preds.ndim not in (3, 4):
            raise ValueError(
                f"JFMetric.update: expected masks of shape (T, H, W) or (B, T, H, W), got {tuple(preds.shape)}"
            )
        if any(size == 0 for size in preds.shape[-3:]):
            raise ValueError(f"JFMetric.update: T, H and W must be non-zero, got {tuple(preds.shape)}")
        p, t = _as_bool_numpy(preds), _as_bool_numpy(target)
        if p.ndim == 3:
            p, t = p[None], t[None]
        j = np.array([_region_similarity_np(pb, tb).mean() for pb, tb in zip(p, t)], dtype=np.float64)
        f = np.array(
            [_boundary_f_measure_np(pb, tb, self.bound_th).mean() for pb, tb in zip(p, t)], dtype=np.float64
        )
        self.j_sum += float(j.sum())
        self.f_sum += float(f.sum())
        self.num_expressions += len(j)
        if self.per_expression:
            self.j_per_expression.append(torch.from_numpy(j).to(self.device))
            self.f_per_expression.append(torch.from_numpy(f).to(self.device))
        return p, t, j, f

    def compute(self) -> dict[str, Any]:
        """Mean over expressions of the per-expression mean J and F.

        Returns:
            ``{"j": float, "f": float, "jf": float}``, plus ``"j_per_expression"`` and
            ``"f_per_expression"`` (lists of float) when ``per_expression=True``.

        Raises:
            RuntimeError: no expression was added (on any process).
        """
        n = float(self.num_expressions)
        if n == 0:
            raise RuntimeError("JFMetric.compute() called before update()")
        j = float(self.j_sum) / n
        f = float(self.f_sum) / n
        out: dict[str, Any] = {"j": j, "f": f, "jf": (j + f) / 2}
        if self.per_expression:
            out["j_per_expression"] = dim_zero_cat(self.j_per_expression).tolist()
            out["f_per_expression"] = dim_zero_cat(self.f_per_expression).tolist()
        return out


class NoTargetJFMetric(JFMetric):
    """MeViS v2's scores: J, F and J&F over every expression, plus what v2 reports about expressions that refer to
    nothing in their video ("no-target"; empty ground truth on every frame).

    Definitions, per expression (P its predicted masks over its T frames):

    - J, F, J&F: :class:`JFMetric`'s, over ALL expressions, target and no-target (the v1 definitions: an empty
      prediction of an empty frame scores J = F = 1, so a no-target expression predicted empty everywhere scores
      1). Source: henghuiding/MeViS ``tools/eval_mevis.py`` (v1); that v2 keeps them is inferred (its scorer is
      not public).
    - ``j_target``, ``f_target``, ``jf_target``: the same means over the target expressions only.
    - **N-acc** = (no-target expressions predicted no-target) / (no-target expressions); **T-acc** = (target
      expressions predicted target) / (target expressions). Source: the same group's GRES evaluation
      (henghuiding/ReLA ``gres_model/evaluation/refer_evaluation.py``: ``N_acc = TP / (TP + FN)`` over no-target
      samples, ``T_acc = TN / (TN + FP)`` over target samples). Inferred for video: an expression is *predicted
      no-target* when P is empty on every frame (the server's rule is not public). None where the split has no
      expression of that kind (GRES reports 0 there; None says "undefined").
    - **Final** = (J&F + N-acc + T-acc) / 3: inferred, it matches the published v2 tables to 0.01; None when N-acc
      or T-acc is.

    Which expressions are no-target: ``is_target`` given to :meth:`update` (the dataset's flag, e.g.
    :attr:`mpgsam2.data.ExpressionRecord.no_target`), else an expression is no-target when its ground truth is
    empty on every frame given. All states are sums (DDP-safe, like :class:`JFMetric`).
    """

    j_target_sum: Tensor
    f_target_sum: Tensor
    num_target: Tensor
    num_target_predicted: Tensor
    num_no_target: Tensor
    num_no_target_predicted: Tensor

    def __init__(self, bound_th: float = DEFAULT_BOUND_TH, **kwargs: Any) -> None:
        super().__init__(bound_th=bound_th, per_expression=False, **kwargs)
        zero = torch.tensor(0.0, dtype=torch.float64)
        for name in (
            "j_target_sum",
            "f_target_sum",
            "num_target",
            "num_target_predicted",
            "num_no_target",
            "num_no_target_predicted",
        ):
            self.add_state(name, zero.clone(), dist_reduce_fx="sum")
        self.set_dtype(torch.float64)

    def update(self, preds: MaskLike, target: MaskLike, is_target: Any = None) -> None:
        """Add expressions: ``preds`` / ``target`` (T, H, W) or (B, T, H, W) as :meth:`JFMetric.update`;
        ``is_target``: bool, or (B,) bools, whether each expression refers to something (None: its ground truth is
        non-empty on some frame)."""
        count = 1 if preds.ndim == 3 else int(preds.shape[0])
        flags = None if is_target is None else np.asarray(is_target, bool).reshape(-1)
        if flags is not None and flags.shape != (count,):
            raise ValueError(f"is_target must give one flag per expression ({count}), got {flags.shape}")
        p, t, j, f = self._score(preds, target)
        targeted = t.reshape(len(t), -1).any(1) if flags is None else flags
        predicted = p.reshape(len(p), -1).any(1)  # predicted target: non-empty on some frame
        self.j_target_sum += float(j[targeted].sum())
        self.f_target_sum += float(f[targeted].sum())
        self.num_target += int(targeted.sum())
        self.num_target_predicted += int((targeted & predicted).sum())
        self.num_no_target += int((~targeted).sum())
        self.num_no_target_predicted += int((~targeted & ~predicted).sum())

    def compute(self) -> dict[str, Any]:
        """``{"j", "f", "jf", "j_target", "f_target", "jf_target", "n_acc", "t_acc", "final", "num_target",
        "num_no_target"}`` (see the class docstring; None where undefined)."""
        out = super().compute()
        n_target, n_none = float(self.num_target), float(self.num_no_target)
        j_t = float(self.j_target_sum) / n_target if n_target else None
        f_t = float(self.f_target_sum) / n_target if n_target else None
        n_acc = float(self.num_no_target_predicted) / n_none if n_none else None
        t_acc = float(self.num_target_predicted) / n_target if n_target else None
        final = None if n_acc is None or t_acc is None else (out["jf"] + n_acc + t_acc) / 3
        return {
            **out,
            "j_target": j_t,
            "f_target": f_t,
            "jf_target": None if j_t is None else (j_t + f_t) / 2,
            "n_acc": n_acc,
            "t_acc": t_acc,
            "final": final,
            "num_target": int(n_target),
            "num_no_target": int(n_none),
        }


class ImageIoU:
    """Referring image segmentation scores (RefCOCO/+/g), one (H, W) mask pair per referring expression.

    mIoU averages each sample's IoU (1 when prediction and target are both empty, as J); cIoU (overall IoU)
    divides the summed intersections by the summed unions (1 when every union is empty), the two numbers the
    RefCOCO literature reports. J, F and J&F are those of 1-frame videos (:class:`JFMetric`), so J = mIoU.

    A plain accumulator on one process (no synchronisation): the images are scored where their predictions are.
    """

    def __init__(self, bound_th: float = DEFAULT_BOUND_TH) -> None:
        self.jf = JFMetric(bound_th=bound_th, sync_on_compute=False)
        self.ious: list[float] = []
        self.inter_sum = 0
        self.union_sum = 0

    def update(self, pred: MaskLike, target: MaskLike) -> float:
        """Adds one sample: (H, W) or (1, H, W) masks, any non-zero value foreground. Returns its IoU.

        Raises:
            ValueError: the masks differ in shape or are not one image.
        """
        p, t = (m[0] if m.ndim == 3 and m.shape[0] == 1 else m for m in map(_as_bool_numpy, (pred, target)))
        if p.ndim != 2 or t.ndim != 2:
            raise ValueError(
                f"ImageIoU.update: expected (H, W) or (1, H, W) masks, got {p.shape} and {t.shape}"
            )
        if p.shape != t.shape:
            raise ValueError(f"ImageIoU.update: pred {p.shape} and target {t.shape} differ in shape")
        inter, union = int(np.count_nonzero(p & t)), int(np.count_nonzero(p | t))
        iou = inter / union if union else 1.0
        self.ious.append(iou)
        self.inter_sum += inter
        self.union_sum += union
        self.jf.update(p[None], t[None])
        return iou

    def compute(self) -> dict[str, float]:
        """``{"miou", "ciou", "j", "f", "jf", "num_samples"}``.

        Raises:
            ValueError: no sample was added.
        """
        if not self.ious:
            raise ValueError("no samples to evaluate")
        scores = self.jf.compute()
        return {
            "miou": sum(self.ious) / len(self.ious),
            "ciou": self.inter_sum / self.union_sum if self.union_sum else 1.0,
            "j": scores["j"],
            "f": scores["f"],
            "jf": scores["jf"],
            "num_samples": len(self.ious),
        }
