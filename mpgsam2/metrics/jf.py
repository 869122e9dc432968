"""J&F, the region and boundary scores of video object segmentation, as DAVIS-2017 and MeViS compute them.

Definitions follow the official DAVIS-2017 toolkit (davisvideochallenge/davis2017-evaluation,
``davis2017/metrics.py``: ``db_eval_iou``, ``db_eval_boundary``, ``f_measure``, ``_seg2bmap``). The MeViS
evaluation (henghuiding/MeViS ``tools/eval_mevis.py``) calls the same functions with ``bound_th=0.008`` on
masks where any non-zero value is foreground. Results agree with that code to float64 rounding on any
binary masks, empty and full ones included.

Per frame, for a predicted mask P and a ground-truth mask G of size H x W:

- **J** (region similarity) = |P ∩ G| / |P ∪ G|, and 1 when both masks are empty.
- **F** (boundary F-measure): take the one-pixel boundary maps B(P) and B(G) (:func:`seg_to_boundary`),
  dilate each with a disk of radius ``r = boundary_tolerance(H, W, bound_th)``
  (``ceil(bound_th * sqrt(H² + W²))`` for ``bound_th < 1``, else ``bound_th`` pixels), then
  precision = |B(P) ∩ dil(B(G))| / |B(P)|, recall = |B(G) ∩ dil(B(P))| / |B(G)| and
  F = 2PR / (P + R) (0 when P + R = 0). When both boundary maps are empty F = 1; when exactly one is
  empty F = 0.

:class:`~mpgsam2.metrics.JFMetric` averages these over the frames of each expression, then over
expressions; J&F = (J + F) / 2.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch import Tensor

MaskLike = Tensor | np.ndarray

DEFAULT_BOUND_TH = 0.008


def _as_bool_numpy(mask: MaskLike) -> np.ndarray:
    """A boolean numpy copy or view of ``mask``; any non-zero value is foreground (as ``astype(bool)``)."""
    if isinstance(mask, Tensor):
        mask = mask.detach()
        if mask.dtype != torch.bool:
            # Threshold before the device transfer so that only one byte per pixel crosses it.
            mask = mask != 0
        return mask.cpu().numpy()
    mask = np.asarray(mask)
    return mask if mask.dtype == np.bool_ else mask.astype(bool)


def _check_pair(pred: MaskLike, target: MaskLike) -> tuple[np.ndarray, np.ndarray]:
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} "
            f"and target {tuple(target.shape)}"
        )
    if pred.ndim not in (2, 3):
        raise ValueError(f"expected masks of shape (T, H, W) or (H, W), got {tuple(pred.shape)}")
    if pred.shape[-1] == 0 or pred.shape[-2] == 0:
        raise ValueError(f"masks must have a non-zero height and width, got {tuple(pred.shape)}")
    return _as_bool_numpy(pred), _as_bool_numpy(target)


def _check_bound_th(bound_th: float) -> None:
    if not (isinstance(bound_th, (int, float)) and math.isfinite(bound_th) and bound_th >= 0):
        raise ValueError(f"bound_th must be a finite number >= 0, got {bound_th!r}")


def seg_to_boundary(mask: MaskLike) -> MaskLike:
    """One-pixel-wide boundary map of a binary mask, as the official ``_seg2bmap`` at the mask's own size.

    A pixel is a boundary pixel when it differs from at least one of its right, lower and lower-right
    neighbours that lie inside the image. The boundary therefore sits on the last foreground pixel towards
    the right/bottom and on the last background pixel towards the left/top.

    Args:
        mask: (..., H, W) tensor or array; any non-zero value is foreground.

    Returns:
        (..., H, W) bool boundary map, a tensor on ``mask``'s device for a tensor input, else an array.
    """
    if mask.ndim < 2:
        raise ValueError(f"expected a mask of shape (..., H, W), got {tuple(mask.shape)}")
    if isinstance(mask, Tensor):
        seg = mask if mask.dtype == torch.bool else mask != 0
        edge = torch.zeros_like(seg)
    else:
        seg = _as_bool_numpy(mask)
        edge = np.zeros(seg.shape, dtype=bool)
    # parity: neighbours outside the image are not compared, so the outermost right column and bottom row
    # only compare along the border and the bottom-right pixel is never a boundary pixel; a mask touching
    # the right/bottom edge has no boundary along that edge (a full mask has no boundary at all).
    edge[..., :, :-1] |= seg[..., :, :-1] != seg[..., :, 1:]
    edge[..., :-1, :] |= seg[..., :-1, :] != seg[..., 1:, :]
    edge[..., :-1, :-1] |= seg[..., :-1, :-1] != seg[..., 1:, 1:]
    return edge


def boundary_tolerance(height: int, width: int, bound_th: float = DEFAULT_BOUND_TH) -> float:
    """Radius in pixels of the disk that dilates the boundaries: ``bound_th`` itself if it is >= 1, else
    ``ceil(bound_th * sqrt(H² + W²))`` (e.g. 12 px at 1280x720, 8 px at 854x480)."""
    _check_bound_th(bound_th)
    if bound_th >= 1:
        return float(bound_th)
    # Same float operations as np.linalg.norm((H, W)) so that ceil() lands on the same integer.
    return float(math.ceil(bound_th * math.sqrt(float(height * height + width * width))))


def disk(radius: float) -> np.ndarray:
    """Disk structuring element ``x² + y² <= r²`` on the offsets ``arange(-r, r + 1)`` (uint8 0/1).

    Same as ``skimage.morphology.disk(radius)``, including a non-integer radius (which gives an even size).
    """
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def _region_similarity_np(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """J per frame of boolean (..., H, W) arrays, float64 (...)."""
    inter = np.count_nonzero(pred & target, axis=(-2, -1))
    union = np.count_nonzero(pred | target, axis=(-2, -1))
    # parity: an empty prediction of an empty target scores 1, as db_eval_iou.
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def _f_measure_frame(pred_edge: np.ndarray, target_edge: np.ndarray, kernel: np.ndarray) -> float:
    """F of one frame from the two (H, W) boolean boundary maps."""
    n_pred = int(np.count_nonzero(pred_edge))
    n_target = int(np.count_nonzero(target_edge))
    if n_pred == 0 or n_target == 0:
        # parity: f_measure sets (P, R) = (1, 1) when both are empty (F = 1) and (1, 0) or (0, 1) when one
        # is (F = 0).
        return 1.0 if n_pred == n_target else 0.0
    # Dilated values matter only at boundary pixels, so crop to the box around both boundaries: every
    # source pixel of the dilation lies inside it, hence the crop changes no value that is read.
    either = pred_edge | target_edge
    rows = np.flatnonzero(either.any(axis=1))
    cols = np.flatnonzero(either.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    pred_c = np.ascontiguousarray(pred_edge[box])
    target_c = np.ascontiguousarray(target_edge[box])
    # cv2's default border ignores pixels outside the image, as the official code (same call).
    pred_dil = cv2.dilate(pred_c.view(np.uint8), kernel).view(bool)
    target_dil = cv2.dilate(target_c.view(np.uint8), kernel).view(bool)
    precision = np.count_nonzero(pred_c & target_dil) / n_pred
    recall = np.count_nonzero(target_c & pred_dil) / n_target
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _boundary_f_measure_np(pred: np.ndarray, target: np.ndarray, bound_th: float) -> np.ndarray:
    """F per frame of boolean (T, H, W) arrays, float64 (T,)."""
    kernel = disk(boundary_tolerance(pred.shape[-2], pred.shape[-1], bound_th))
    # One frame at a time keeps the temporaries at one frame's size (videos of ~100 720p frames).
    return np.array(
        [_f_measure_frame(seg_to_boundary(p), seg_to_boundary(t), kernel) for p, t in zip(pred, target)],
        dtype=np.float64,
    )


def region_similarity(pred: MaskLike, target: MaskLike) -> Tensor:
    """Region similarity J (IoU) per frame, 1 where both masks are empty (official ``db_eval_iou``).

    Args:
        pred: (T, H, W) or (H, W) predicted mask; any non-zero value is foreground.
        target: ground-truth mask of the same shape.

    Returns:
        float64 CPU tensor of shape (T,), or a 0-d tensor for (H, W) input.
    """
    p, t = _check_pair(pred, target)
    return torch.from_numpy(np.asarray(_region_similarity_np(p, t), dtype=np.float64))


def boundary_f_measure(pred: MaskLike, target: MaskLike, bound_th: float = DEFAULT_BOUND_TH) -> Tensor:
    """Boundary F-measure per frame (official ``db_eval_boundary`` / ``f_measure``).

    Args:
        pred: (T, H, W) or (H, W) predicted mask; any non-zero value is foreground.
        target: ground-truth mask of the same shape.
        bound_th: boundary tolerance, a fraction of the image diagonal if < 1, else pixels.

    Returns:
        float64 CPU tensor of shape (T,), or a 0-d tensor for (H, W) input.
    """
    _check_bound_th(bound_th)
    p, t = _check_pair(pred, target)
    frames = p.reshape(-1, *p.shape[-2:]), t.reshape(-1, *t.shape[-2:])
    return torch.from_numpy(_boundary_f_measure_np(*frames, bound_th).reshape(p.shape[:-2]))
