"""Reference points for the demo's validation J&F: an all-empty prediction and "every object" (the union of all
objects of the video, i.e. segmenting without reading the sentence), scored as the demo's validation is: J, F and
J&F over all expressions, J&F over the target expressions, and (each video has a no-target expression) N-acc,
T-acc and Final (:class:`mpgsam2.metrics.NoTargetJFMetric`).

    python experiments/demo_baselines.py [--root data/synthetic_ytvos]

The dataset is generated with the demo's defaults when missing (the same as `python train.py experiment=demo`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mpgsam2.data import RefYTVOSSource
from mpgsam2.data.synthetic import SyntheticConfig, generate_synthetic_ytvos
from mpgsam2.metrics import NoTargetJFMetric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data/synthetic_ytvos", help="the synthetic dataset folder")
    args = parser.parse_args()
    root = generate_synthetic_ytvos(Path(args.root), SyntheticConfig())
    source = RefYTVOSSource(root, "valid")
    empty, union = NoTargetJFMetric(sync_on_compute=False), NoTargetJFMetric(sync_on_compute=False)
    for expr in source.expressions:
        indices = list(range(expr.video.num_frames))
        target = torch.from_numpy(source.read_masks(expr, indices))
        is_target = not expr.no_target
        empty.update(torch.zeros_like(target), target, is_target=is_target)
        objects = {
            o for e in source.expressions if e.video.video_id == expr.video.video_id for o in e.obj_ids
        }
        everything = np.zeros(tuple(target.shape), dtype=bool)
        for obj in objects:
            other = expr.__class__(expr.video, expr.exp_id, expr.caption, (obj,))
            everything |= source.read_masks(other, indices)
        union.update(torch.from_numpy(everything), target, is_target=is_target)
    keys = ("j", "f", "jf", "jf_target", "n_acc", "t_acc", "final")
    for name, metric in (("all-empty", empty), ("every object", union)):
        r = metric.compute()
        print(f"{name}: " + " ".join(f"{k}={r[k]:.4f}" for k in keys))


if __name__ == "__main__":
    main()
