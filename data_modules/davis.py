"""Ref-DAVIS17 (ReferFormer's converted layout; see ``mpgsam2.data.davis``): valid for evaluation (the paper does
not train on it; the train split is supported all the same)."""

from __future__ import annotations

from pathlib import Path

from data_modules.base import ReferringVideoDataModule
from mpgsam2.data import RefDAVISSource, ReferringVideoSource
from mpgsam2.evaluation.benchmarks import Benchmark
from mpgsam2.evaluation.staging import EvalTarget

__all__ = ["RefDAVISDataModule"]


class RefDAVISDataModule(ReferringVideoDataModule):
    """Args: root: the converted ``ref-davis`` folder (``train/``, ``valid/``, ``meta_expressions/``);
    annotator: keep only this annotator set's expressions (0..3) or all (None); **kwargs: see
    ReferringVideoDataModule (``val_split`` "valid" by default)."""

    benchmark = "davis"

    def __init__(
        self, root: str, annotator: int | None = None, val_split: str | None = "valid", **kwargs: object
    ) -> None:
        self.root = Path(root)
        self.annotator = annotator
        super().__init__(val_split=val_split, **kwargs)  # type: ignore[arg-type]

    def split_source(self, split: str) -> ReferringVideoSource:
        return RefDAVISSource(self.root, split, self.annotator)

    def eval_targets(self, bench: Benchmark, split: str | None = None) -> list[EvalTarget]:
        """One target per annotator set (all of the benchmark's, the protocol, or ``annotator``), each of
        ``split`` (default: ``val_split``, else the benchmark's default split), staged under ``anno_<k>``;
        captions swapped on request."""
        if not bench.annotator_sets:
            return super().eval_targets(bench, split)
        split = split or self.val_split or bench.default_split
        annotators = bench.annotators if self.annotator is None else [int(self.annotator)]
        return [
            EvalTarget(
                self.evaluated(RefDAVISSource(self.root, split, annotator=k)), f"anno_{k}", annotator=k
            )
            for k in annotators
        ]
