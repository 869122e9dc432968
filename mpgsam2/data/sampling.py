"""Training clip sampling (spec §2.3; original: ``datasets/ytvos.py`` and ``datasets/mevis.py``, identical)."""

from __future__ import annotations

import random

__all__ = ["sample_clip_indices"]

_MAX_LOCAL_STEP = 3  # a, b ~ U{1, 2, 3}


def sample_clip_indices(
    anchor: int, num_frames_in_video: int, clip_len: int, rng: random.Random
) -> list[int]:
    """Frame indices of a training clip around ``anchor``, in temporal order.

    With n = ``num_frames_in_video`` and a, b drawn uniformly from {1, 2, 3}:

    - ``clip_len == 1``: ``[anchor]`` (parity: the original samples nothing else for ``num_frames == 1``, the
      RefCOCO-as-video setting). No random number is drawn.
    - local frames: ``anchor``, ``max(0, anchor - a)``, ``min(n - 1, anchor + b)``; duplicates are possible at
      the video's ends.
    - ``clip_len == 2``: the first two of the sorted local frames, ``[anchor - a, anchor]`` (clamped) (parity:
      the original samples the three local frames and reads the first ``num_frames`` after sorting).
    - ``clip_len == 3``: the three local frames.
    - ``clip_len > 3``: plus g = ``clip_len - 3`` global frames drawn without replacement from the frames
      outside [min, max] of the local frames; when fewer than g exist, g frames without replacement from the
      whole video; when the video has fewer than g frames, every frame ``g // n`` times plus ``g % n`` distinct
      random frames.

    deviation: the original's candidate list ``all[:min] + all[max:]`` also contains the local maximum itself
    (an off-by-one that can duplicate the ``anchor + b`` frame); here the candidates are strictly outside
    [min, max]. The fallback thresholds are unchanged (the original's ``len(candidates) > g`` with one extra
    candidate is exactly ``len(candidates) >= g`` here).

    Args:
        anchor: the anchor frame, ``0 <= anchor < num_frames_in_video``.
        num_frames_in_video: n >= 1.
        clip_len: T >= 1, the number of indices returned.
        rng: the only source of randomness; equal states give equal clips.

    Returns:
        ``clip_len`` sorted indices in ``[0, n)``, repetitions possible (short videos, video ends).

    Raises:
        ValueError: an argument is out of range.
    """
    n = num_frames_in_video
    if n < 1:
        raise ValueError(f"num_frames_in_video must be >= 1, got {n}")
    if not 0 <= anchor < n:
        raise ValueError(f"anchor {anchor} is outside the video's {n} frames")
    if clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")
    if clip_len == 1:
        return [anchor]

    before = rng.randint(1, _MAX_LOCAL_STEP)
    after = rng.randint(1, _MAX_LOCAL_STEP)
    local = sorted([anchor, max(0, anchor - before), min(n - 1, anchor + after)])
    if clip_len <= 3:
        return local[:clip_len]

    num_global = clip_len - 3
    lo, hi = local[0], local[-1]
    outside = [*range(lo), *range(hi + 1, n)]
    if len(outside) >= num_global:
        extra = rng.sample(outside, num_global)
    elif n >= num_global:
        extra = rng.sample(range(n), num_global)
    else:
        # parity: the original's repetition fallback for videos shorter than the number of global frames.
        extra = rng.sample(range(n), num_global % n) + list(range(n)) * (num_global // n)
    return sorted(local + extra)
