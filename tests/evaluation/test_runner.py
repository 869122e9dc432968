"""The evaluation runner (mpgsam2.evaluation.runner): sharded processes, the Ref-DAVIS17 palette PNGs, and the
model predictor staging a video in one call; on tiny datasets in the Ref-YouTube-VOS layout."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.datasets import expected_mask
from helpers.evaluation import (
    COLLATE,
    DAVIS_VIDEOS,
    TRANSFORM,
    PatternPredictor,
    TruthPredictor,
    WithObjectIds,
    davis_targets,
    stage_source,
)
from PIL import Image

from mpgsam2.data import ClipTransform, DatasetError, ReferringCollate
from mpgsam2.data.synthetic import davis_palette
from mpgsam2.evaluation.runner import PerExpression, model_predictor, predict_to_staging
from mpgsam2.evaluation.staging import EvalTarget, StagingArea
from mpgsam2.evaluation.zips import write_submission_zip
from mpgsam2.metrics.scoring import score_predictions


def test_sharded_processes_split_the_videos_and_give_the_same_zip(valid_source, tmp_path: Path) -> None:
    targets = [EvalTarget(valid_source)]
    single = stage_source(valid_source, tmp_path / "single", PatternPredictor())
    reference = write_submission_zip(tmp_path / "single.zip", single, targets, "ytvos").read_bytes()
    staging = StagingArea(tmp_path / "sharded" / "staging")
    written = []
    for rank in range(2):
        written.append(
            predict_to_staging(
                PerExpression(PatternPredictor()),
                targets,
                staging,
                "binary",
                transform=TRANSFORM,
                collate=COLLATE,
                rank=rank,
                world=2,
            )
        )
    # balanced by cost (frames x expressions): the larger vid_c alone on rank 0, vid_a on rank 1
    assert written == [[("vid_c",)], [("vid_a",)]]
    assert write_submission_zip(tmp_path / "sharded.zip", staging, targets, "ytvos").read_bytes() == reference


@pytest.mark.parametrize("raw_ids", [False, True])
def test_davis_staging_of_perfect_predictions_scores_one(davis_source, tmp_path: Path, raw_ids: bool) -> None:
    source = WithObjectIds(davis_source) if raw_ids else davis_source
    staging = StagingArea(tmp_path / "staging")
    predict_to_staging(
        PerExpression(TruthPredictor(davis_source)),
        davis_targets(source),
        staging,
        "palette",
        transform=TRANSFORM,
        collate=COLLATE,
    )
    png = staging.root / "anno_2" / "dogs" / "00015.png"
    with Image.open(png) as img:
        assert img.mode == "P" and img.getpalette() == davis_palette()[: len(img.getpalette())]
        ids = np.asarray(img)
    assert set(np.unique(ids)) == {0, 1, 2, 3}  # palette index = object id
    np.testing.assert_array_equal(ids == 3, expected_mask(DAVIS_VIDEOS["dogs"], 3, 3))
    result = score_predictions(staging.root, source, "davis")
    assert result["jf"] == 1.0 and set(result["annotators"]) == {f"anno_{k}" for k in range(4)}
    assert result["num_objects"] == 5


def test_palette_writer_needs_one_object_per_expression(train_source, tmp_path: Path) -> None:
    bad = WithObjectIds(train_source)
    bad.expressions = [replace(train_source.expressions[0], obj_ids=(1, 2))]
    bad.expressions_file = Path("/data/ref-davis/meta_expressions.json")
    with pytest.raises(DatasetError, match="ref-davis/meta_expressions.json.*exactly one object id"):
        predict_to_staging(
            PerExpression(TruthPredictor(train_source)),
            [EvalTarget(bad)],
            StagingArea(tmp_path / "s"),
            "palette",
            transform=TRANSFORM,
            collate=COLLATE,
        )


def test_model_predictor_stages_a_video_in_one_call_with_the_per_expression_masks(valid_source, tmp_path):
    from helpers.tiny import make_tiny_model

    model = make_tiny_model()
    with torch.no_grad():  # a random tiny model barely reads the words; make them matter
        model.text_proj.weight.mul_(30)
    predictor = model_predictor(model, "cpu", None)
    calls = []
    real_unit = predictor.predict_unit

    def spy(batches):
        out = real_unit(batches)
        calls.append((batches, out))
        return out

    predictor.predict_unit = spy
    transform = ClipTransform(**model.input_sizes, train=False)

    def tokenizer(texts):  # caption-dependent ids of caption-dependent lengths, right-padded with 3
        rows = [[0, *(4 + ord(c) % 40 for c in text[:8]), 2] for text in texts]
        ids = torch.full((len(rows), max(map(len, rows))), 3)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids, ids != 3

    collate = ReferringCollate(tokenizer)

    def stage(name, predict):
        staging = StagingArea(tmp_path / name)
        predict_to_staging(
            predict, [EvalTarget(valid_source)], staging, "probability", transform=transform, collate=collate
        )
        return {p.relative_to(staging.root): p.read_bytes() for p in staging.root.rglob("*.png")}

    reads = []
    read_frames = valid_source.read_frames
    valid_source.read_frames = lambda video, indices: (
        reads.append(video.video_id) or read_frames(video, indices)
    )
    per_video = stage("video", predictor)
    assert sorted(reads) == sorted(
        {e.video.video_id for e in valid_source.expressions}
    )  # each video read once
    videos = {e.video.video_id for e in valid_source.expressions}
    sizes = [len(batches) for batches, _ in calls]
    assert len(calls) == len(videos) and sum(sizes) == len(valid_source.expressions) and max(sizes) > 1
    for batches, out in calls:  # each expression's logits are its own (as predicted alone), in order
        frames = {"sam_frames": batches[0].sam_frames, "beit_frames": batches[0].beit_frames}
        alone = [real_unit([replace(b, **frames)])[0] for b in batches]
        for logits, reference in zip(out, alone):
            assert (torch.sigmoid(logits) - torch.sigmoid(reference)).abs().max() <= 1e-4
        if len(out) > 1:  # and the expressions of a video differ, so an order mix-up would show
            assert (torch.sigmoid(alone[0]) - torch.sigmoid(alone[1])).abs().max() > 1e-3
    # PerExpression: one predict call per expression, against the one predict_unit call per video above
    per_expression = stage("expr", PerExpression(lambda batch: real_unit([batch])[0]))
    assert per_video.keys() == per_expression.keys() and len(per_video) > 0
    # 8-bit probability PNGs: equal up to a rare one-level rounding step
    for key, data in per_video.items():
        a = np.asarray(Image.open(io.BytesIO(data)), dtype=int)
        b = np.asarray(Image.open(io.BytesIO(per_expression[key])), dtype=int)
        assert np.abs(a - b).max() <= 1, key
