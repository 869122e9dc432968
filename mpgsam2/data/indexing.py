"""What the training datasets share: items over concatenated groups, per-item seeding and resampling.

:class:`ResamplingDataset` is the base of :class:`~mpgsam2.data.video_dataset.ReferringClipDataset` (groups =
expressions, units = clips) and :class:`~mpgsam2.data.image_dataset.ReferringImageDataset` (groups = sources, units =
samples). Subclasses say how to draw a candidate and build an item from it; the base holds the epoch, maps an item
index to (group, offset), seeds the draws and retries empty targets (except where an empty target is the ground
truth: a no-target expression, kept as drawn).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mpgsam2.data.batch import ReferringItem

__all__ = ["ResamplingDataset", "make_item"]


def make_item(
    sam: torch.Tensor, beit: torch.Tensor, target: torch.Tensor, caption: str, meta: dict[str, object]
) -> ReferringItem:
    """The item of a transform's output: ``valid`` (T,) says which frames of ``target`` (T, S, S) are
    non-empty."""
    return ReferringItem(
        sam_frames=sam,
        beit_frames=beit,
        masks=target,
        valid=target.flatten(1).any(1),
        caption=caption,
        meta=meta,
    )


class ResamplingDataset(Dataset):
    """Items indexed over groups laid end to end, each a pure function of ``(seed, epoch, index)``.

    Subclasses call :meth:`_init_index` with the number of items of each group and implement :meth:`_draw`,
    :meth:`_make_item` and :meth:`_warn_exhausted`. :meth:`__getitem__` draws a candidate for the index; when its
    target is empty it draws a uniformly random index instead, up to ``max_resample`` times, after which the last
    candidate's item is returned whatever its target.

    Class attributes: ``_rng_tag`` (names the generator's stream) and ``_unit`` (what an item is, for messages).
    """

    _rng_tag = "item"
    _unit = "items"

    def _init_index(self, counts: Sequence[int], seed: int, max_resample: int) -> None:
        self.seed = seed
        self.max_resample = max_resample
        self.epoch = 0
        # _ends[k] = number of items of groups 0..k; item i belongs to the first k with _ends[k] > i.
        self._ends = np.cumsum(np.asarray(counts, dtype=np.int64))
        self._len = int(self._ends[-1]) if len(self._ends) else 0

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch's random draws (see the class docstring)."""
        self.epoch = epoch

    def _position(self, index: int) -> tuple[int, int]:
        """(group, offset within the group) of item ``index``."""
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} {self._unit}")
        k = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[k - 1]) if k else 0
        return k, index - start

    def __getitem__(self, index: int) -> ReferringItem:
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} {self._unit}")
        # A string seed is hashed with SHA-512 by `random`: stable across processes, runs and platforms.
        rng = random.Random(f"{self._rng_tag}/{self.seed}/{self.epoch}/{index}")
        np_rng = np.random.default_rng(rng.getrandbits(64))
        attempt_index = index
        for attempt in range(self.max_resample + 1):
            last = attempt == self.max_resample
            key, target = self._draw(attempt_index, rng)
            expected_empty = self._expects_empty(key)
            # An empty target is rejected before its frames are decoded and augmented (unless it is the last try,
            # or the candidate refers to nothing: then an empty target is its ground truth).
            if target.any() or last or expected_empty:
                item = self._make_item(*key, target, np_rng)
                if bool(item.valid.any()) or expected_empty:
                    return item
            attempt_index = rng.randrange(self._len)
        self._warn_exhausted(index)
        return item

    def _expects_empty(self, key: tuple[object, ...]) -> bool:
        """Whether the candidate ``key`` refers to nothing, so that its empty target is kept, not redrawn (MeViS
        v2's no-target expressions); False here."""
        return False

    def _draw(self, index: int, rng: random.Random) -> tuple[tuple[object, ...], np.ndarray]:
        """The candidate of item ``index``: (the leading arguments of :meth:`_make_item`, its bool target)."""
        raise NotImplementedError

    def _make_item(self, *args: object) -> ReferringItem:
        """The item of a candidate: ``_make_item(*key, target, np_rng)``."""
        raise NotImplementedError

    def _warn_exhausted(self, index: int) -> None:
        """Logs that ``max_resample`` draws from item ``index`` all had an empty target."""
        raise NotImplementedError
