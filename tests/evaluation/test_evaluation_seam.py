"""The evaluation seam (mpgsam2.evaluation): data modules yield their targets (annotator sets, caption swaps), the
runner pairs batches with units by key, benchmark rows are typed, and the old import paths are aliases."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers.datasets import davis_captions, write_davis_dataset, write_ytvos_dataset
from helpers.evaluation import COLLATE, TRANSFORM, PatternPredictor

from data_modules import RefDAVISDataModule, RefYTVOSDataModule
from data_modules.base import DataConfigError
from mpgsam2.data import ReferringBatch
from mpgsam2.data.video_dataset import ReferringVideoEvalDataset
from mpgsam2.evaluation.benchmarks import BENCHMARKS, Benchmark, MaskFormat, Scoring, benchmark
from mpgsam2.evaluation.runner import predict_to_staging
from mpgsam2.evaluation.staging import EvalTarget, StagingArea


class _Zeros:
    """A unit predictor: zero logits per expression; records the units it was given (their video ids)."""

    def __init__(self, drop_last: bool = False) -> None:
        self.videos: list[list[str]] = []
        self.drop_last = drop_last

    def predict_unit(self, batches: list[ReferringBatch]) -> list[torch.Tensor]:
        self.videos.append([b.meta[0].video for b in batches])
        out = [torch.zeros(len(b.meta[0].frame_names), *b.meta[0].orig_size) for b in batches]
        return out[:-1] if self.drop_last else out


def _captions(target: EvalTarget) -> dict[tuple[str, str], str]:
    return {(e.video.video_id, e.exp_id): e.caption for e in target.source.expressions}


def test_davis_data_module_yields_one_target_per_annotator_set(tmp_path: Path, tokenizer_path: Path) -> None:
    root = write_davis_dataset(tmp_path / "davis", "valid")
    dm = RefDAVISDataModule(root=str(root), tokenizer_path=str(tokenizer_path))
    bench = benchmark("davis")
    targets = dm.eval_targets(bench)
    assert [(t.folder, t.annotator) for t in targets] == [(f"anno_{k}", k) for k in range(4)]
    for k, target in enumerate(targets):  # set k holds each object's k-th caption, of the valid split
        assert target.source.name == f"davis/valid/anno{k}"
        assert sorted(_captions(target).values()) == sorted(
            davis_captions(obj)[k] for obj in (1, 2, 1)
        )  # dv_a: objects 1 and 2, dv_b: object 1
    only = RefDAVISDataModule(root=str(root), tokenizer_path=str(tokenizer_path), annotator=2)
    assert [(t.folder, t.annotator) for t in only.eval_targets(bench)] == [("anno_2", 2)]

    swapped = RefDAVISDataModule(root=str(root), tokenizer_path=str(tokenizer_path), swap_expressions=True)
    for k, target in enumerate(swapped.eval_targets(bench)):
        # dv_a's two objects trade captions within the set; dv_b (one object) has no partner and is dropped
        assert target.source.name == f"davis/valid/anno{k}+swapped"
        assert _captions(target) == {
            ("dv_a", str(k)): davis_captions(2)[k],
            ("dv_a", str(4 + k)): davis_captions(1)[k],
        }


def test_video_data_module_targets_follow_the_split_and_swap_as_validation(
    tmp_path: Path, tokenizer_path: Path
) -> None:
    root = write_ytvos_dataset(tmp_path / "ytvos", "train")
    write_ytvos_dataset(root, "valid", annotations=False, obj_ids_in_json=False)
    bench = benchmark("ytvos")
    no_val = RefYTVOSDataModule(root=str(root), tokenizer_path=str(tokenizer_path), val_split=None)
    assert [t.source.name for t in no_val.eval_targets(bench)] == ["ytvos/valid"]  # the benchmark's split
    assert [t.source.name for t in no_val.eval_targets(bench, "train")] == ["ytvos/train"]

    dm = RefYTVOSDataModule(
        root=str(root), tokenizer_path=str(tokenizer_path), val_split="train", swap_expressions=True, seed=3
    )
    (target,) = dm.eval_targets(bench)
    assert (target.folder, target.annotator) == (None, None)
    validated = dm.make_val_dataset().source  # what validation during training scores
    assert target.source.name == validated.name == "ytvos/train+swapped"
    assert _captions(target) == {(e.video.video_id, e.exp_id): e.caption for e in validated.expressions}
    plain = RefYTVOSDataModule(root=str(root), tokenizer_path=str(tokenizer_path), val_split="train")
    assert _captions(target) != {
        k: v for k, v in _captions(plain.eval_targets(bench)[0]).items() if k in _captions(target)
    }
    with pytest.raises(DataConfigError, match="no annotator sets.*Ref-DAVIS17 benchmark scores 4"):
        dm.eval_targets(benchmark("davis"))


def _valid_source(tmp_path: Path):
    from mpgsam2.data import RefYTVOSSource

    root = write_ytvos_dataset(tmp_path / "ytvos", "valid", annotations=False, obj_ids_in_json=False)
    return RefYTVOSSource(root, "valid")


def _run(source, staging: StagingArea, predictor) -> list[tuple[str, ...]]:
    return predict_to_staging(
        predictor,
        [EvalTarget(source)],
        staging,
        MaskFormat.BINARY,
        transform=TRANSFORM,
        collate=COLLATE,
    )


def test_runner_gives_each_unit_its_own_batches_and_checks_them(tmp_path: Path, monkeypatch) -> None:
    source = _valid_source(tmp_path)
    predictor = _Zeros()
    written = _run(source, StagingArea(tmp_path / "ok"), predictor)
    by_video: dict[str, list[str]] = {}
    for e in source.expressions:
        by_video.setdefault(e.video.video_id, []).append(e.video.video_id)
    assert written == [(v,) for v in by_video] and predictor.videos == list(by_video.values())

    with pytest.raises(ValueError, match=r"unit vid_a: 1 predictions for 2 expressions"):
        _run(source, StagingArea(tmp_path / "short"), _Zeros(drop_last=True))
    assert not StagingArea(tmp_path / "short").is_done(("vid_a",))

    real = ReferringVideoEvalDataset.video_items

    def shuffled(self, indices):  # a loader that hands a unit its items in another order
        items = real(self, indices)
        return [replace(items[0], meta=items[-1].meta), *items[1:-1], replace(items[-1], meta=items[0].meta)]

    monkeypatch.setattr(ReferringVideoEvalDataset, "video_items", shuffled)
    staging = StagingArea(tmp_path / "mixed")
    with pytest.raises(ValueError, match=r"unit vid_a: batches of \[\('vid_a', '1'\), \('vid_a', '0'\)\]"):
        _run(source, staging, _Zeros())
    assert not staging.is_done(("vid_a",))


def test_benchmark_rows_are_typed() -> None:
    assert {b.name: (b.mask_format, b.scoring) for b in BENCHMARKS.values()} == {
        "ytvos": (MaskFormat.BINARY, Scoring.EXPRESSIONS),
        "mevis": (MaskFormat.PROBABILITY, Scoring.EXPRESSIONS),
        "mevis_v2": (MaskFormat.BINARY, Scoring.EXPRESSIONS),
        "davis": (MaskFormat.PALETTE, Scoring.DAVIS),
        "refcoco": (MaskFormat.BINARY, Scoring.IMAGES),
    }
    assert [b.name for b in BENCHMARKS.values() if b.scores_images] == ["refcoco"]
    assert [f.value for f in MaskFormat if f.per_expression] == ["binary", "probability"]
    row = dict(
        name="x",
        title="X",
        prediction_file="{video}.png",
        zip_prefix=None,
        chunk_size=None,
        annotator_sets=None,
        default_split="val",
    )
    assert Benchmark(**row, mask_format="palette", scoring="davis").mask_format is MaskFormat.PALETTE
    with pytest.raises(ValueError, match=r"benchmark 'x': mask_format='jpeg' is not one of \['binary', "):
        Benchmark(**row, mask_format="jpeg", scoring="davis")
    with pytest.raises(
        ValueError, match=r"scoring='bleu' is not one of \['expressions', 'davis', 'images'\]"
    ):
        Benchmark(**row, mask_format="binary", scoring="bleu")


def test_old_import_paths_are_aliases_of_the_evaluation_package() -> None:
    import data_modules.base
    import mpgsam2.benchmarks
    import mpgsam2.distributed
    import mpgsam2.evaluation as evaluation
    import mpgsam2.inference
    import mpgsam2.inference.evaluate
    import mpgsam2.inference.submission

    assert (
        mpgsam2.benchmarks.benchmark is evaluation.benchmark
        and mpgsam2.benchmarks.BENCHMARKS is evaluation.BENCHMARKS
    )
    for name in (
        "EvalTarget",
        "StagingArea",
        "ModelPredictor",
        "PaletteMerger",
        "write_submission_zip",
        "check_manifest",
    ):
        assert getattr(mpgsam2.inference.submission, name) is getattr(evaluation, name), name
        assert getattr(mpgsam2.inference, name) is getattr(evaluation, name), name
    assert mpgsam2.inference.evaluate.evaluate_model is evaluation.evaluate_model
    assert mpgsam2.inference.rank_and_world is mpgsam2.distributed.rank_and_world
    assert data_modules.base.rank_and_world is mpgsam2.distributed.rank_and_world
    assert mpgsam2.distributed.rank_and_world() == (0, 1)


def test_the_old_runner_path_still_takes_a_one_expression_predictor(tmp_path: Path) -> None:
    """``mpgsam2.inference.submission.predict_to_staging`` (the pre-seam path) wraps a predictor of one expression
    per call in ``PerExpression``: it stages what the runner stages for the wrapped predictor."""
    from mpgsam2.evaluation.runner import PerExpression
    from mpgsam2.inference.submission import predict_to_staging as old_predict_to_staging

    source = _valid_source(tmp_path)
    options = dict(transform=TRANSFORM, collate=COLLATE)
    old, new = StagingArea(tmp_path / "old"), StagingArea(tmp_path / "new")
    plain = PatternPredictor()
    written = old_predict_to_staging(plain, [EvalTarget(source)], old, MaskFormat.BINARY, **options)
    assert written == predict_to_staging(
        PerExpression(PatternPredictor()), [EvalTarget(source)], new, MaskFormat.BINARY, **options
    )
    assert len(plain.calls) == len(source.expressions)
    old_files = sorted(p.relative_to(old.root) for p in old.root.rglob("*.png"))
    assert old_files and old_files == sorted(p.relative_to(new.root) for p in new.root.rglob("*.png"))
    for name in old_files:
        assert (old.root / name).read_bytes() == (new.root / name).read_bytes()
