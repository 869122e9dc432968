"""MeViS v2 scoring on valid_u: J, F, J&F over all expressions, J&F over target expressions, N-acc, T-acc and
Final, each equal to an independent reference written here (perfect, empty, all-wrong and mixed predictions;
target and no-target expressions; an expression empty on some frames only), through eval.py's folder scoring."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers.configs import compose_config
from helpers.datasets import default_mevis_v2_videos, expected_union_mask, write_mevis_dataset
from PIL import Image
from scipy.ndimage import binary_dilation

import eval as eval_entry
from mpgsam2.data import MeViSSource
from mpgsam2.metrics import NoTargetJFMetric
from mpgsam2.metrics.scoring import score_predictions

SPEC = default_mevis_v2_videos()


# ------------------------------------------------------------------------------------------------ the reference


def ref_j(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else np.logical_and(pred, truth).sum() / union


def ref_boundary(mask: np.ndarray) -> np.ndarray:
    """A pixel differing from its right, lower or lower-right neighbour inside the image (DAVIS _seg2bmap)."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0), (1, 1)):
                if y + dy < h and x + dx < w and mask[y, x] != mask[y + dy, x + dx]:
                    out[y, x] = True
    return out


def ref_f(pred: np.ndarray, truth: np.ndarray, bound_th: float = 0.008) -> float:
    bp, bg = ref_boundary(pred), ref_boundary(truth)
    if not bp.any() and not bg.any():
        return 1.0
    if not bp.any() or not bg.any():
        return 0.0
    r = math.ceil(bound_th * math.hypot(*pred.shape))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = yy**2 + xx**2 <= r**2
    precision = (bp & binary_dilation(bg, disk)).sum() / bp.sum()
    recall = (bg & binary_dilation(bp, disk)).sum() / bg.sum()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def reference(preds: dict, truths: dict, no_target: dict) -> dict[str, float | None]:
    """The v2 numbers from per-expression (T, H, W) predictions and ground truths."""
    j = {k: np.mean([ref_j(p, t) for p, t in zip(preds[k], truths[k])]) for k in preds}
    f = {k: np.mean([ref_f(p, t) for p, t in zip(preds[k], truths[k])]) for k in preds}
    targets = [k for k in preds if not no_target[k]]
    nones = [k for k in preds if no_target[k]]
    out: dict[str, float | None] = {"j": np.mean(list(j.values())), "f": np.mean(list(f.values()))}
    out["jf"] = (out["j"] + out["f"]) / 2
    out["jf_target"] = (np.mean([j[k] for k in targets]) + np.mean([f[k] for k in targets])) / 2
    out["n_acc"] = np.mean([not preds[k].any() for k in nones]) if nones else None
    out["t_acc"] = np.mean([preds[k].any() for k in targets])
    out["final"] = None if out["n_acc"] is None else (out["jf"] + out["n_acc"] + out["t_acc"]) / 3
    return out


# ------------------------------------------------------------------------------------------------ predictions


def _truth(vid: str, exp_id: str, t: int) -> np.ndarray:
    return expected_union_mask(SPEC[vid], SPEC[vid]["expressions"][exp_id][1], t)


def _mixed(vid: str, exp_id: str, t: int) -> np.ndarray:
    truth = _truth(vid, exp_id, t)
    if (vid, exp_id) == ("mv_a", "1"):
        return np.roll(truth, 2, axis=1)  # partly right
    if (vid, exp_id) == ("mv_a", "2"):
        return np.zeros_like(truth)  # a target expression predicted empty everywhere
    if (vid, exp_id) == ("mv_a", "3"):
        return _truth("mv_a", "1", t) if t == 2 else np.zeros_like(truth)  # no-target, one frame predicted
    if (vid, exp_id) == ("mv_b", "0"):
        return truth if t == 0 else np.zeros_like(truth)  # right where present, empty where absent
    return truth  # mv_a/0 perfect, mv_b/1 no-target predicted empty


STRATEGIES: dict[str, Callable[[str, str, int], np.ndarray]] = {
    "perfect": _truth,
    "empty": lambda vid, exp_id, t: np.zeros_like(_truth(vid, exp_id, t)),
    "all_wrong": lambda vid, exp_id, t: ~_truth(vid, exp_id, t),
    "mixed": _mixed,
}


def _write(folder: Path, source: MeViSSource, predict: Callable) -> tuple[dict, dict, dict]:
    preds, truths, no_target = {}, {}, {}
    for expr in source.expressions:
        key = (expr.video.video_id, expr.exp_id)
        out = folder / expr.video.video_id / expr.exp_id
        out.mkdir(parents=True)
        frames = [predict(*key, t) for t in range(expr.video.num_frames)]
        for name, mask in zip(expr.video.frame_names, frames):
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{name}.png")
        preds[key] = np.stack(frames)
        truths[key] = np.stack([_truth(*key, t) for t in range(expr.video.num_frames)])
        no_target[key] = not SPEC[key[0]]["expressions"][key[1]][1]
    return preds, truths, no_target


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mevis_dataset(tmp_path_factory.mktemp("v2") / "mevis", "valid_u", version="v2")


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_v2_scores_equal_the_reference(strategy: str, root: Path, tmp_path: Path) -> None:
    source = MeViSSource(root, "valid_u")
    preds, truths, no_target = _write(tmp_path / "pred", source, STRATEGIES[strategy])
    assert sum(no_target.values()) == 2 and len(no_target) == 6
    scores = score_predictions(tmp_path / "pred", source, "mevis_v2")
    expected = reference(preds, truths, no_target)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, abs=1e-12), key
    assert scores["num_target"] == 4 and scores["num_no_target"] == 2 and scores["num_expressions"] == 6
    if strategy == "perfect":
        assert scores["final"] == scores["jf"] == scores["n_acc"] == scores["t_acc"] == 1.0
    if strategy == "empty":
        assert scores["n_acc"] == 1.0 and scores["t_acc"] == 0.0
    if strategy == "all_wrong":
        assert scores["n_acc"] == 0.0 and scores["t_acc"] == 1.0
    if strategy == "mixed":
        assert scores["n_acc"] == 0.5 and scores["t_acc"] == 0.75


def test_v1_scoring_of_the_same_folder_is_jf_only(root: Path, tmp_path: Path) -> None:
    source = MeViSSource(root, "valid_u")
    preds, truths, no_target = _write(tmp_path / "pred", source, _mixed)
    v1 = score_predictions(tmp_path / "pred", source, "mevis")
    v2 = score_predictions(tmp_path / "pred", source, "mevis_v2")
    assert set(v1) == {"j", "f", "jf", "num_expressions"}
    assert (v1["j"], v1["f"], v1["jf"]) == (v2["j"], v2["f"], v2["jf"])  # one J&F definition


def test_the_metric_without_no_target_expressions_leaves_n_acc_and_final_undefined() -> None:
    truth = np.zeros((2, 3, 8, 8), bool)
    truth[:, :, 2:5, 2:5] = True
    metric = NoTargetJFMetric(sync_on_compute=False)
    metric.update(truth, truth)  # is_target from the ground truth: both target
    scores = metric.compute()
    assert scores["n_acc"] is None and scores["final"] is None and scores["t_acc"] == 1.0
    assert scores["jf_target"] == scores["jf"] == 1.0
    # the dataset's flag wins over the ground truth, and a bad flag count changes nothing
    with pytest.raises(ValueError, match="one flag per expression"):
        metric.update(truth, truth, is_target=[True])
    assert metric.compute()["num_target"] == 2
    metric.update(np.zeros((3, 8, 8), bool), truth[0], is_target=False)
    assert metric.compute()["n_acc"] == 1.0 and metric.compute()["num_no_target"] == 1


def test_eval_py_writes_the_v2_scores_with_the_version_and_prints_them_last(
    root: Path, tmp_path: Path, capsys
) -> None:
    source = MeViSSource(root, "valid_u")
    preds, truths, no_target = _write(tmp_path / "pred", source, _mixed)
    cfg = compose_config(
        "eval",
        [f"predictions={tmp_path / 'pred'}", "data=mevis", f"data.root={root}", "data.val_split=valid_u"],
        tmp_path,
    )
    result = eval_entry.run(cfg)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["dataset"] == "mevis_v2" and record["dataset_version"] == "v2"
    expected = reference(preds, truths, no_target)
    assert record["final"] == pytest.approx(expected["final"], abs=1e-12)
    line = eval_entry.final_line(result)
    assert line.startswith(f"j={expected['j']:.4f} f={expected['f']:.4f} jf={expected['jf']:.4f} ")
    assert line.endswith(f"n_acc=0.5000 t_acc=0.7500 final={expected['final']:.4f} version=v2")
    # a v1 folder's record names its version too; its last line is unchanged
    v1_root = write_mevis_dataset(tmp_path / "v1", "valid_u")
    v1_source = MeViSSource(v1_root, "valid_u")
    v1_pred = tmp_path / "v1pred"
    for expr in v1_source.expressions:
        (v1_pred / expr.video.video_id / expr.exp_id).mkdir(parents=True)
        for name in expr.video.frame_names:
            size = (20, 28) if expr.video.video_id == "mv_b" else (24, 32)
            Image.fromarray(np.zeros(size, np.uint8)).save(
                v1_pred / expr.video.video_id / expr.exp_id / f"{name}.png"
            )
    cfg = compose_config(
        "eval", [f"predictions={v1_pred}", "data=mevis", f"data.root={v1_root}"], tmp_path / "b"
    )
    result = eval_entry.run(cfg)
    assert json.loads((tmp_path / "b" / "run" / "metrics.json").read_text())["dataset_version"] == "v1"
    assert eval_entry.final_line(result) == f"j={result['j']:.4f} f={result['f']:.4f} jf={result['jf']:.4f}"
