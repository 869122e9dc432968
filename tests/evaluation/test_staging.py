"""Resumable staging (mpgsam2.evaluation.staging): an interrupted run resumes, unsafe ids are refused, the manifest
keeps runs apart, and the staged files are where the benchmark rows say; on tiny datasets in the Ref-YouTube-VOS
layout with a fake predictor (no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.evaluation import (
    COLLATE,
    TRANSFORM,
    PatternPredictor,
    TruthPredictor,
    davis_targets,
    stage_source,
)

from mpgsam2.data import DatasetError, ExpressionRecord, VideoRecord
from mpgsam2.evaluation.benchmarks import benchmark
from mpgsam2.evaluation.runner import PerExpression, predict_to_staging
from mpgsam2.evaluation.staging import EvalTarget, StagingArea, check_manifest
from mpgsam2.evaluation.zips import write_submission_zip


def test_interrupted_run_resumes_to_the_same_zip(valid_source, tmp_path: Path) -> None:
    targets = [EvalTarget(valid_source)]
    clean = stage_source(valid_source, tmp_path / "clean", PatternPredictor())
    reference = write_submission_zip(
        tmp_path / "clean" / "submission.zip", clean, targets, "ytvos"
    ).read_bytes()

    run = tmp_path / "run"
    crashing = PatternPredictor(fail_after=3)  # vid_a (2 expressions) completes, vid_c stops after 1 of 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        stage_source(valid_source, run, crashing)
    staging = StagingArea(run / "staging")
    assert staging.is_done(("vid_a",)) and not staging.is_done(("vid_c",))
    assert (staging.partial_root / "vid_c").is_dir()  # the half-written video never reached staging/
    assert not (run / "submission.zip").exists()

    again = PatternPredictor()
    staging = stage_source(valid_source, run, again)
    assert {v for v, _ in again.calls} == {"vid_c"}  # the finished video is skipped
    staging.remove_partials()
    zipped = write_submission_zip(run / "submission.zip", staging, targets, "ytvos")
    assert zipped.read_bytes() == reference
    leftovers = [p for p in run.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert leftovers == [] and not staging.partial_root.exists()


class _ListSource:
    """A source from hand-made records (the writer must not trust them)."""

    def __init__(self, expressions: list[ExpressionRecord]) -> None:
        self.name = "handmade"
        self.expressions_file = Path("/data/meta_expressions.json")
        self.expressions = expressions
        self.has_masks = False

    def read_frames(self, video, indices):  # noqa: ANN001, ANN201
        return np.zeros((len(indices), 4, 4, 3), np.uint8)

    def read_masks(self, expression, indices):  # noqa: ANN001, ANN201
        raise AssertionError


@pytest.mark.parametrize("field, value", [("video_id", "../x"), ("video_id", "/abs"), ("exp_id", "../../e")])
def test_writer_refuses_unsafe_ids(tmp_path: Path, field: str, value: str) -> None:
    video = VideoRecord("v", ("00000",), (Path("00000.jpg"),))
    expr = ExpressionRecord(video, "0", "a cat", ())
    # the records validate on construction; a source that bypasses them must still be refused by the writer
    object.__setattr__(video if field == "video_id" else expr, field, value)
    with pytest.raises(DatasetError, match="meta_expressions.json") as err:
        stage_source(_ListSource([expr]), tmp_path / "run", PatternPredictor())
    assert repr(value) in str(err.value)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_manifest_refuses_to_mix_runs(tmp_path: Path) -> None:
    path = tmp_path / "staging.json"
    check_manifest(path, {"checkpoint": "a.ckpt", "chunk_size": None})
    check_manifest(path, {"checkpoint": "a.ckpt", "chunk_size": None})  # the same run resumes
    with pytest.raises(ValueError, match="staging.json.*chunk_size"):
        check_manifest(path, {"checkpoint": "a.ckpt", "chunk_size": 24})
    # a run folder staged before the precision was recorded was staged in fp32: it resumes in fp32 only
    check_manifest(path, {"checkpoint": "a.ckpt", "chunk_size": None, "precision": "fp32"})
    path.write_text('{"checkpoint": "a.ckpt", "chunk_size": null}')
    with pytest.raises(ValueError, match="staging.json.*precision"):
        check_manifest(path, {"checkpoint": "a.ckpt", "chunk_size": None, "precision": "bf16"})


@pytest.mark.parametrize("name", ["ytvos", "mevis", "davis"])
def test_staged_files_follow_the_benchmark_row(davis_source, tmp_path: Path, name: str) -> None:
    """The ``prediction_file`` column of mpgsam2.evaluation.benchmarks is where the writers put the PNGs."""
    bench = benchmark(name)
    targets = davis_targets(davis_source) if bench.annotator_sets else [EvalTarget(davis_source)]
    staging = StagingArea(tmp_path / "staging")
    predict_to_staging(
        PerExpression(TruthPredictor(davis_source)),
        targets,
        staging,
        bench.mask_format,
        transform=TRANSFORM,
        collate=COLLATE,
    )
    staged = {p.relative_to(staging.root).as_posix() for p in staging.root.rglob("*.png")}
    expected = {
        bench.prediction_path(annotator=k, video=e.video.video_id, exp_id=e.exp_id, frame=frame)
        for k in (bench.annotators or [None])
        for e in davis_source.expressions
        for frame in e.video.frame_names
    }
    assert staged == expected and len(staged) > 0
