"""J&F metric and the RefCOCO image scores: hand-computed per-frame scores, the boundary rule, averaging protocol, inputs, state merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpgsam2.metrics import (
    ImageIoU,
    JFMetric,
    boundary_f_measure,
    boundary_tolerance,
    disk,
    region_similarity,
    seg_to_boundary,
)


def square(top: int, left: int, size: int = 4, shape: tuple[int, int] = (20, 20)) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    m[top : top + size, left : left + size] = True
    return m


def jf(pred: torch.Tensor, target: torch.Tensor, **kw) -> tuple[float, float]:
    return float(region_similarity(pred, target)), float(boundary_f_measure(pred, target, **kw))


# --- boundary map, disk, tolerance -------------------------------------------------------------------


def test_boundary_of_single_pixel_is_2x2_block_towards_origin():
    m = torch.zeros(5, 5, dtype=torch.bool)
    m[2, 2] = True
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[1:3, 1:3] = (
        True  # (1,1),(1,2),(2,1) see the pixel right/below/diagonally; (2,2) differs from them
    )
    assert torch.equal(seg_to_boundary(m), expected)
    assert np.array_equal(seg_to_boundary(m.numpy()), expected.numpy())


def test_boundary_edge_rules():
    # Bottom-right pixel: the corner itself is never a boundary pixel; its three upper-left neighbours are.
    m = np.zeros((5, 5), dtype=np.uint8)
    m[4, 4] = 7  # non-zero counts as foreground
    assert sorted(zip(*np.nonzero(seg_to_boundary(m)))) == [(3, 3), (3, 4), (4, 3)]
    # A full mask has no boundary (the image border is not a boundary).
    assert not seg_to_boundary(np.ones((6, 9), dtype=bool)).any()
    # Right half: boundary is the background column left of it, all rows; left half: its own last column.
    right = np.zeros((5, 5), dtype=bool)
    right[:, 3:] = True
    assert np.array_equal(np.argwhere(seg_to_boundary(right)), [[y, 2] for y in range(5)])
    assert np.array_equal(np.argwhere(seg_to_boundary(~right)), [[y, 2] for y in range(5)])
    # One row: only right neighbours are compared.
    row = np.array([[0, 1, 1, 0]], dtype=bool)
    assert seg_to_boundary(row).tolist() == [[True, False, True, False]]
    # Batched input (..., H, W): frame by frame.
    batch = np.stack([right, ~right, m.astype(bool)])
    assert np.array_equal(seg_to_boundary(batch), np.stack([seg_to_boundary(x) for x in batch]))
    assert torch.equal(seg_to_boundary(torch.from_numpy(batch)), torch.from_numpy(seg_to_boundary(batch)))


def test_disk_matches_skimage_definition():
    assert disk(0).tolist() == [[1]]
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(2).tolist() == [
        [0, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 0, 0],
    ]
    d = disk(12)
    assert d.shape == (25, 25) and d.dtype == np.uint8
    ys, xs = np.mgrid[-12:13, -12:13]
    assert np.array_equal(d, (ys**2 + xs**2 <= 144).astype(np.uint8))


def test_boundary_tolerance():
    assert boundary_tolerance(720, 1280) == 12  # ceil(0.008 * 1468.6)
    assert boundary_tolerance(480, 854) == 8  # ceil(0.008 * 979.6)
    assert boundary_tolerance(20, 20) == 1  # ceil(0.008 * 28.3)
    assert boundary_tolerance(20, 20, bound_th=3) == 3  # >= 1: pixels
    with pytest.raises(ValueError, match="bound_th"):
        boundary_tolerance(20, 20, bound_th=-0.1)


# --- per-frame scores, hand-computed -----------------------------------------------------------------


def test_identical_masks_score_one():
    m = square(5, 5)
    assert jf(m, m) == (1.0, 1.0)


def test_both_empty_score_one():
    e = torch.zeros(20, 20, dtype=torch.bool)
    assert jf(e, e) == (1.0, 1.0)


def test_one_empty_scores_zero():
    e = torch.zeros(20, 20, dtype=torch.bool)
    assert jf(e, square(5, 5)) == (0.0, 0.0)
    assert jf(square(5, 5), e) == (0.0, 0.0)


def test_full_versus_empty_keeps_official_f():
    # A full mask has no boundary pixel, so both boundary maps are empty and F = 1 while J = 0.
    assert jf(torch.ones(20, 20, dtype=torch.bool), torch.zeros(20, 20, dtype=torch.bool)) == (0.0, 1.0)


def test_square_shifted_by_one_pixel_is_within_tolerance():
    # 20x20 image: tolerance = ceil(0.008 * sqrt(800)) = 1 px, disk(1) = the 4-neighbour cross.
    # Target: 4x4 square rows 5..8, cols 5..8; pred: the same shifted right by one (cols 6..9).
    # J = |overlap| / |union| = (4*3) / (4*5) = 12/20 = 0.6.
    # Boundary of a 4x4 square = outline of the 5x5 box rows 4..8 x cols 4..8 (16 px), for pred cols 5..9.
    # Every target outline pixel is the pred outline or has a horizontal neighbour on it (left column
    # x=4 -> pred x=5, right column x=8 -> pred x=9, top/bottom rows shared), and symmetrically, so
    # P = R = 1 and F = 1 although J < 1.
    j, f = jf(square(5, 6), square(5, 5))
    assert j == pytest.approx(0.6, abs=1e-12)
    assert f == 1.0


def test_square_shifted_by_two_pixels():
    # Pred cols 7..10 vs target cols 5..8 (rows 5..8), tolerance 1 px (cross).
    # J = (4*2) / (4*6) = 1/3.
    # Target outline: rows 4..8 x cols 4..8; pred outline: rows 4..8 x cols 6..10.
    #   top row y=4, x=4..8: x=4 has no pred pixel within the cross, x=5 touches (4,6), x=6..8 on it -> 4/5
    #   bottom row y=8: same -> 4/5
    #   left column x=4, y=5..7: nearest pred pixels are 2 px away -> 0/3
    #   right column x=8, y=5..7: y=5 touches (4,8), y=7 touches (8,8), y=6 nothing -> 2/3
    # Recall = 10/16; by mirror symmetry precision = 10/16; F = 0.625.
    j, f = jf(square(5, 7), square(5, 5))
    assert j == pytest.approx(1 / 3, abs=1e-12)
    assert f == pytest.approx(0.625, abs=1e-12)
    # With a 2 px tolerance every outline pixel is matched.
    assert float(boundary_f_measure(square(5, 7), square(5, 5), bound_th=2)) == 1.0


def test_precision_and_recall_differ():
    # Target = the square plus a far single pixel; pred = the square.
    # J = 16/17. Target boundary = 16 (square outline) + 4 (pixel's 2x2 block) = 20 px, all 16 pred
    # boundary pixels are on it: P = 16/16 = 1, R = 16/20 = 0.8, F = 2*0.8/1.8 = 8/9.
    target = square(5, 5)
    target[15, 15] = True
    j, f = jf(square(5, 5), target)
    assert j == pytest.approx(16 / 17, abs=1e-12)
    assert f == pytest.approx(8 / 9, abs=1e-12)


def test_functional_shapes_and_dtype():
    pred = torch.stack([square(5, 5), square(5, 6), torch.zeros(20, 20, dtype=torch.bool)])
    target = torch.stack([square(5, 5), square(5, 5), square(5, 5)])
    j, f = region_similarity(pred, target), boundary_f_measure(pred, target)
    assert j.shape == f.shape == (3,) and j.dtype == f.dtype == torch.float64
    assert torch.allclose(j, torch.tensor([1.0, 0.6, 0.0], dtype=torch.float64))
    assert torch.equal(f, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    assert region_similarity(pred[1], target[1]).shape == ()
    assert boundary_f_measure(pred[1].numpy(), target[1].numpy()).shape == ()


def test_scores_are_symmetric_and_bounded():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 23, 37, generator=g) > 0.6
    b = torch.rand(4, 23, 37, generator=g) > 0.6
    assert torch.equal(region_similarity(a, b), region_similarity(b, a))
    assert torch.equal(boundary_f_measure(a, b), boundary_f_measure(b, a))
    f = boundary_f_measure(a, b)
    assert ((f >= 0) & (f <= 1)).all() and ((f > 0) & (f < 1)).any()


def test_functional_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(20, 20\).*\(20, 21\)"):
        region_similarity(torch.zeros(20, 20), torch.zeros(20, 21))
    with pytest.raises(ValueError, match="shape"):
        boundary_f_measure(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))


# --- the metric ---------------------------------------------------------------------------------------


def random_expressions(n: int, seed: int, shape=(3, 24, 31)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, *shape, generator=g) > 0.5
    pred = target ^ (torch.rand(n, *shape, generator=g) > 0.9)
    return pred, target


def test_metric_averages_frames_then_expressions():
    e = torch.zeros(20, 20, dtype=torch.bool)
    sq = square(5, 5)
    m = JFMetric(per_expression=True)
    m.update(sq[None], sq[None])  # expression A: one frame, J = F = 1
    m.update(torch.stack([sq, e, e]), torch.stack([sq, sq, sq]))  # B: frames (1,1), (0,0), (0,0) -> 1/3
    out = m.compute()
    # Mean of the expression means (1 + 1/3) / 2 = 2/3, not the frame mean 2/4.
    assert out["j"] == pytest.approx(2 / 3, abs=1e-12)
    assert out["f"] == pytest.approx(2 / 3, abs=1e-12)
    assert out["jf"] == pytest.approx(2 / 3, abs=1e-12)
    assert out["j_per_expression"] == pytest.approx([1.0, 1 / 3], abs=1e-12)
    assert out["f_per_expression"] == pytest.approx([1.0, 1 / 3], abs=1e-12)
    assert all(isinstance(out[k], float) for k in ("j", "f", "jf"))


def test_metric_matches_functional_means():
    pred, target = random_expressions(3, seed=1)
    m = JFMetric()
    m.update(pred, target)
    out = m.compute()
    js = [region_similarity(p, t).mean().item() for p, t in zip(pred, target)]
    fs = [boundary_f_measure(p, t).mean().item() for p, t in zip(pred, target)]
    assert out["j"] == pytest.approx(np.mean(js), abs=1e-12)
    assert out["f"] == pytest.approx(np.mean(fs), abs=1e-12)
    assert out["jf"] == pytest.approx((np.mean(js) + np.mean(fs)) / 2, abs=1e-12)
    assert 0 <= out["j"] <= 1 and 0 <= out["f"] <= 1 and 0 < out["f"] < 1


def test_batched_update_equals_separate_updates():
    pred, target = random_expressions(4, seed=2)
    batched, single = JFMetric(per_expression=True), JFMetric(per_expression=True)
    batched.update(pred, target)
    for p, t in zip(pred, target):
        single.update(p, t)
    assert batched.compute() == single.compute()
    assert int(batched.num_expressions) == 4


def test_non_bool_input_counts_non_zero_as_foreground():
    pred, target = random_expressions(2, seed=3)
    ref = JFMetric()
    ref.update(pred, target)
    as_png = JFMetric()  # MeViS prediction PNGs hold prob*255, foreground ~127..255
    as_png.update(pred.to(torch.uint8) * 200, target.to(torch.uint8) * 255)
    as_prob = JFMetric()  # any non-zero value counts, not >= 0.5
    as_prob.update(pred.float() * 0.3, target.to(torch.int64))
    assert as_png.compute() == ref.compute() == as_prob.compute()


def test_update_rejects_bad_shapes():
    m = JFMetric()
    with pytest.raises(ValueError, match=r"\(2, 8, 8\).*\(2, 8, 9\)"):
        m.update(torch.zeros(2, 8, 8, dtype=torch.bool), torch.zeros(2, 8, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(T, H, W\) or \(B, T, H, W\)"):
        m.update(torch.zeros(8, 8, dtype=torch.bool), torch.zeros(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-zero"):
        m.update(torch.zeros(0, 8, 8, dtype=torch.bool), torch.zeros(0, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="bound_th"):
        JFMetric(bound_th=float("nan"))


def test_compute_before_update_and_reset():
    m = JFMetric()
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="before update"):
        m.compute()
    pred, target = random_expressions(2, seed=4)
    m.update(pred, target)
    first = m.compute()
    m.reset()
    assert float(m.num_expressions) == 0 and float(m.j_sum) == 0 and float(m.f_sum) == 0
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="before update"):
        m.compute()
    m.update(pred, target)
    assert m.compute() == first


def test_merged_states_equal_one_metric_over_all_expressions():
    # What a DDP "sum"/"cat" sync does, done by hand with merge_state.
    pred, target = random_expressions(5, seed=5)
    whole = JFMetric(per_expression=True)
    whole.update(pred, target)
    a, b = JFMetric(per_expression=True), JFMetric(per_expression=True)
    a.update(pred[:2], target[:2])
    b.update(pred[2:], target[2:])
    j_sum, f_sum = float(a.j_sum) + float(b.j_sum), float(a.f_sum) + float(b.f_sum)
    a.merge_state(b)
    assert float(a.num_expressions) == 5
    assert float(a.j_sum) == pytest.approx(j_sum, abs=1e-12)
    assert float(a.f_sum) == pytest.approx(f_sum, abs=1e-12)
    merged, expected = a.compute(), whole.compute()
    for key in ("j", "f", "jf"):
        assert merged[key] == pytest.approx(expected[key], abs=1e-12)
    # The "cat" states hold every expression once; their order follows the merge (incoming first here).
    for key in ("j_per_expression", "f_per_expression"):
        assert sorted(merged[key]) == pytest.approx(sorted(expected[key]), abs=1e-15)


def test_states_are_float64():
    m = JFMetric(per_expression=True)
    assert m.j_sum.dtype == m.f_sum.dtype == m.num_expressions.dtype == torch.float64
    assert m.dtype == torch.float64
    pred, target = random_expressions(1, seed=6)
    m.update(pred, target)
    assert m.j_per_expression[0].dtype == torch.float64


# --- ImageIoU (RefCOCO mIoU / cIoU) -------------------------------------------------------------------


def test_image_iou_means_per_sample_and_overall():
    scores = ImageIoU()
    # sample 1: 4x4 target, prediction covers half of it -> 8 / 16; sample 2: 2x2 target, exact -> 4 / 4
    assert scores.update(square(0, 0, 4) & (torch.arange(20) < 2)[None, :], square(0, 0, 4)) == 0.5
    assert scores.update(square(5, 5, 2)[None], square(5, 5, 2)[None]) == 1.0
    assert (
        scores.update(torch.zeros(3, 3), torch.zeros(3, 3)) == 1.0
    )  # both empty: IoU 1, adds nothing to cIoU
    out = scores.compute()
    assert out["num_samples"] == 3
    assert out["miou"] == pytest.approx((0.5 + 1 + 1) / 3) and out["j"] == pytest.approx(out["miou"])
    assert out["ciou"] == pytest.approx((8 + 4) / (16 + 4))
    with pytest.raises(ValueError, match="differ in shape"):
        scores.update(torch.zeros(3, 3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="no samples"):
        ImageIoU().compute()
