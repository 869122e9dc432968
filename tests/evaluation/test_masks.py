"""Mask encoding (mpgsam2.evaluation.masks): the binary and probability PNG values and the Ref-DAVIS17 palette
merge."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mpgsam2.evaluation.masks import PaletteMerger, binary_masks, probability_masks


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
