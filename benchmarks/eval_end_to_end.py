"""``eval.py``'s prediction stage on a dataset: the engine (one ``predict_video`` call per video, its frames read
once) against the per-expression path (``predict_expression`` per expression, the video read once per expression,
which is what evaluation did before the engine).

Both run :func:`mpgsam2.inference.submission.predict_to_staging`, the stage ``eval.py`` runs, on the same
synthetic Ref-YouTube-VOS-layout split (generated into a temporary folder; the expressions per video are printed; 64 px
frames resized to the model's input) with the mid-size random model of ``eval_throughput.py``. The staged PNGs of
the two paths are compared first (files that differ, pixels that differ), then the two stages are timed in one
process, interleaved, into fresh staging folders; the speed-up is the median of the per-repeat ratios.

    python benchmarks/eval_end_to_end.py [--videos 6] [--frames 8] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_throughput import BEIT_SIZE, mid_model  # noqa: E402

from data_modules.synthetic import SyntheticDataModule  # noqa: E402
from mpgsam2.evaluation.benchmarks import benchmark  # noqa: E402
from mpgsam2.evaluation.runner import PerExpression, model_predictor, predict_to_staging  # noqa: E402
from mpgsam2.evaluation.staging import StagingArea  # noqa: E402
from mpgsam2.inference import predict_expression  # noqa: E402
from mpgsam2.inference.predictor import expression_text  # noqa: E402


def per_expression(model: torch.nn.Module) -> Any:
    """The path before the engine: a plain predictor, called once per collated expression."""

    @torch.inference_mode()
    def predict(batch: Any) -> torch.Tensor:
        ids, pad = expression_text(batch)
        return predict_expression(
            model,
            batch.sam_frames[0],
            batch.beit_frames[0],
            ids,
            pad,
            batch.meta[0].orig_size,
        ).logits

    return PerExpression(predict)


def stage(predictor: Any, datamodule: SyntheticDataModule, folder: Path) -> float:
    bench = benchmark("ytvos")
    start = time.perf_counter()
    predict_to_staging(
        predictor,
        datamodule.eval_targets(bench),
        StagingArea(folder),
        bench.mask_format,
        transform=datamodule.eval_transform(),
        collate=datamodule.collate,
    )
    return time.perf_counter() - start


def compare(a: Path, b: Path) -> tuple[int, int, int]:
    """(PNG files, files that differ, pixels that differ)."""
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    if files != sorted(p.relative_to(b) for p in b.rglob("*.png")):
        raise SystemExit("the two paths staged different files")
    differ = pixels = 0
    for rel in files:
        x, y = np.asarray(Image.open(a / rel)), np.asarray(Image.open(b / rel))
        n = int((x != y).sum())
        differ += n > 0
        pixels += n
    return len(files), differ, pixels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sam-size", type=int, default=256)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = mid_model(args.sam_size)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        datamodule = SyntheticDataModule(
            root=str(tmp_path / "data"),
            generator={"num_train_videos": 1, "num_valid_videos": args.videos, "num_frames": args.frames},
            sam_size=model.sam.image_size,
            beit_size=BEIT_SIZE,
        )
        datamodule.prepare_data()
        source = datamodule.eval_targets(benchmark("ytvos"))[0].source
        num_expressions = len(source.expressions)
        print(
            f"torch {torch.__version__}, {args.threads} threads, SAM {args.sam_size}, {args.videos} videos x "
            f"{args.frames} frames, {num_expressions} expressions ({num_expressions / args.videos:.2f} per video)"
        )
        engine = model_predictor(model, "cpu", None)
        reference = per_expression(model)
        stage(engine, datamodule, tmp_path / "check_engine")
        stage(reference, datamodule, tmp_path / "check_ref")
        files, differ, pixels = compare(tmp_path / "check_engine", tmp_path / "check_ref")
        print(f"staged PNGs: {files}; files that differ: {differ}; pixels that differ: {pixels}")
        ratios, ref_times, engine_times = [], [], []
        for r in range(args.repeats):
            t_ref = stage(reference, datamodule, tmp_path / f"ref_{r}")
            t_engine = stage(engine, datamodule, tmp_path / f"engine_{r}")
            ref_times.append(t_ref)
            engine_times.append(t_engine)
            ratios.append(t_ref / t_engine)
            print(
                f"repeat {r}: per-expression {t_ref:.2f} s, engine {t_engine:.2f} s, {t_ref / t_engine:.2f}x"
            )
        print("| path | s per split (median) | s per video | speed-up (median of ratios) |")
        print("|---|---:|---:|---:|")
        ref_s, engine_s = statistics.median(ref_times), statistics.median(engine_times)
        print(f"| per-expression | {ref_s:.2f} | {ref_s / args.videos:.2f} | 1.00x |")
        print(
            f"| engine | {engine_s:.2f} | {engine_s / args.videos:.2f} | {statistics.median(ratios):.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
