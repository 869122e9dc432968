"""Validation speed: one expression at a time (streaming, the protocol path) vs. batched clips.

    python benchmarks/validation_paths.py [--root data/synthetic_ytvos] [--batch 8] [--repeats 2]

Runs the demo model (random weights, the demo's sizes) over the synthetic valid split both ways, in the same
process and interleaved, and reports seconds per pass, the ratio and the largest J&F difference.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from data_modules.synthetic import SyntheticDataModule
from mpgsam2.lit_module import RVOSLitModule
from mpgsam2.losses import MPGSAM2Criterion

CONF = Path(__file__).resolve().parents[1] / "conf"


def _demo_model() -> torch.nn.Module:
    """The model `python train.py experiment=demo` builds (random weights)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="train", overrides=["experiment=demo"])
    return instantiate(cfg.model)


def _one_pass(system: RVOSLitModule, datamodule: SyntheticDataModule, batch_size: int) -> tuple[float, float]:
    datamodule.val_batch_size = batch_size
    system.val_jf.reset()
    start = time.perf_counter()
    with torch.inference_mode():
        for i, batch in enumerate(datamodule.val_dataloader()):
            system.validation_step(batch, i)
    return time.perf_counter() - start, system.val_jf.compute()["jf"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data/synthetic_ytvos")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = _demo_model().eval()
    system = RVOSLitModule(model, MPGSAM2Criterion(), torch.optim.AdamW)
    datamodule = SyntheticDataModule(args.root, sam_size=model.sam.image_size, beit_size=64)
    datamodule.prepare_data()
    datamodule.setup("validate")
    times: dict[int, list[float]] = {1: [], args.batch: []}
    scores: dict[int, float] = {}
    for _ in range(args.repeats):
        for size in (1, args.batch):
            seconds, jf = _one_pass(system, datamodule, size)
            times[size].append(seconds)
            scores[size] = jf
    stream, batched = min(times[1]), min(times[args.batch])
    print(f"expressions: {len(datamodule.val_dataset)}, threads: {torch.get_num_threads()}")
    print(
        f"one at a time (streaming): {stream:.1f} s   batched x{args.batch}: {batched:.1f} s   ratio {stream / batched:.1f}"
    )
    print(
        f"J&F: {scores[1]:.6f} vs {scores[args.batch]:.6f} (|diff| {abs(scores[1] - scores[args.batch]):.1e})"
    )


if __name__ == "__main__":
    main()
