"""MeViS v2: the released file names, no-target expressions, audio expressions, version detection and the refusal
to mix a v1 and a v2 folder (tiny datasets written in the released layouts)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from helpers.datasets import MEVIS_FILES, default_mevis_v2_videos, expected_union_mask, write_mevis_dataset

from data_modules import MeViSDataModule
from mpgsam2.benchmarks import benchmark
from mpgsam2.data import DatasetError, MeViSSource
from mpgsam2.data.mevis import detect_mevis_version


@pytest.fixture
def v2_root(tmp_path: Path) -> Path:
    root = tmp_path / "mevis_v2"
    write_mevis_dataset(root, "train", version="v2")
    write_mevis_dataset(root, "valid_u", version="v2")
    write_mevis_dataset(root, "valid", masks=False, version="v2")
    return root


def test_v2_file_names_are_read_and_the_version_detected(v2_root: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="mpgsam2.data.mevis"):
        sources = {split: MeViSSource(v2_root, split) for split in ("train", "valid_u", "valid")}
    for split, source in sources.items():
        assert source.version == "v2" and source.name == f"mevis_v2/{split}"
        assert source.expressions_file == v2_root / split / MEVIS_FILES["v2"][split]
        assert f"{source.expressions_file} (detected from the files)" in caplog.text
    assert not (v2_root / "valid" / "mask_dict.json").exists() and not sources["valid"].has_masks
    spec = default_mevis_v2_videos()
    expected = {(v, e) for v, s in spec.items() for e in s["expressions"]}
    assert {(e.video.video_id, e.exp_id) for e in sources["valid_u"].expressions} == expected
    # the released valid split carries no ids: nothing about existence is known there
    assert not any(e.no_target for e in sources["valid"].expressions)
    assert sources["valid_u"].num_no_target == 2


def test_v2_no_target_expressions_have_an_empty_target_on_every_frame(v2_root: Path) -> None:
    source = MeViSSource(v2_root, "valid_u", version="v2")
    spec = default_mevis_v2_videos()
    for expr in source.expressions:
        annos = spec[expr.video.video_id]["expressions"][expr.exp_id][1]
        assert expr.no_target == (not annos) and expr.obj_ids == tuple(annos)
        masks = source.read_masks(expr, range(expr.video.num_frames))
        truth = [
            expected_union_mask(spec[expr.video.video_id], annos, t) for t in range(expr.video.num_frames)
        ]
        np.testing.assert_array_equal(masks, np.stack(truth))
        if expr.no_target:
            assert masks.shape[0] == expr.video.num_frames and not masks.any()


def test_v1_names_are_unchanged_and_v1_has_no_no_target_flag(tmp_path: Path) -> None:
    root = write_mevis_dataset(tmp_path / "mevis", "valid_u")
    source = MeViSSource(root, "valid_u")
    assert source.version == "v1" and source.name == "mevis/valid_u"
    assert source.expressions_file == root / "valid_u" / "meta_expressions.json"
    assert not any(e.no_target for e in source.expressions)


def test_a_folder_with_both_versions_is_refused_unless_the_version_is_given(tmp_path: Path) -> None:
    root = write_mevis_dataset(tmp_path / "mevis", "valid_u", version="v1")
    write_mevis_dataset(root, "valid_u", version="v2")
    v1_file, v2_file = (
        root / "valid_u" / "meta_expressions.json",
        root / "valid_u" / "meta_expressions_v2.json",
    )
    with pytest.raises(
        DatasetError, match="meta_expressions.json.*v1.*meta_expressions_v2.json.*v2.*data.version"
    ):
        MeViSSource(root, "valid_u")
    with pytest.raises(DatasetError, match="data.version"):
        MeViSDataModule(str(root), tokenizer_path="unused").benchmark  # noqa: B018
    assert MeViSSource(root, "valid_u", version="v1").expressions_file == v1_file
    given = MeViSSource(root, "valid_u", version="v2")
    assert given.expressions_file == v2_file and given.num_no_target == 2


def test_a_root_mixing_versions_across_splits_is_refused(tmp_path: Path) -> None:
    root = write_mevis_dataset(tmp_path / "mevis", "train", version="v1")
    write_mevis_dataset(root, "valid_u", version="v2")
    with pytest.raises(DatasetError, match=r"MeViS v1 \(.*train.*\) and MeViS v2 \(.*valid_u.*\)"):
        detect_mevis_version(root)
    # given, each split is read with that version's name (and a missing one named)
    with pytest.raises(DatasetError, match="meta_expressions.json.*not found"):
        MeViSSource(root, "valid_u", version="v1")


def test_a_missing_expressions_file_names_both_candidates(tmp_path: Path) -> None:
    (tmp_path / "mevis" / "valid").mkdir(parents=True)
    with pytest.raises(
        DatasetError,
        match=r"expected meta_expressions.json \(v1\) or meta_expressions_v2_release.json \(v2\)",
    ):
        MeViSSource(tmp_path / "mevis", "valid")
    with pytest.raises(ValueError, match="MeViS v1 has no split 'test'"):
        MeViSSource(tmp_path / "mevis", "test", version="v1")


def test_the_v2_text_test_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of.*v2 only.*meta_expressions_text_release.json"):
        MeViSSource(tmp_path / "mevis", "test")
    root = write_mevis_dataset(tmp_path / "mevis", "test", masks=False, version="v2")
    source = MeViSSource(root, "test")
    assert source.version == "v2" and source.expressions_file.name == "meta_expressions_text_release.json"
    assert not source.has_masks


def test_audio_expressions_are_counted_and_skipped_with_one_log_line(tmp_path: Path, caplog) -> None:
    videos = default_mevis_v2_videos()
    videos["mv_a"]["expressions"]["4"] = (None, [1], {"audio": "audio/mv_a/4.wav"})
    videos["mv_b"]["expressions"]["2"] = (None, [3], {"audio_path": "audio/mv_b/2.wav"})
    videos["mv_b"]["expressions"]["0"] = (
        "a green square that disappears",
        [3],
        {"audio": "audio/mv_b/0.wav"},
    )
    root = write_mevis_dataset(tmp_path / "mevis", "train", videos, version="v2")
    with caplog.at_level(logging.INFO, logger="mpgsam2.data.mevis"):
        source = MeViSSource(root, "train")
    assert source.num_audio_only == 2 and source.num_with_audio == 1
    ids = {(e.video.video_id, e.exp_id) for e in source.expressions}
    assert ("mv_a", "4") not in ids and ("mv_b", "2") not in ids and ("mv_b", "0") in ids
    lines = [r.getMessage() for r in caplog.records if "audio-only" in r.getMessage()]
    assert len(lines) == 1 and "2 audio-only expression(s) skipped" in lines[0]


def test_the_data_module_names_the_benchmark_of_its_version(v2_root: Path, tmp_path: Path) -> None:
    assert MeViSDataModule(str(v2_root), tokenizer_path="unused").benchmark == "mevis_v2"
    v1 = write_mevis_dataset(tmp_path / "v1", "valid_u")
    assert MeViSDataModule(str(v1), tokenizer_path="unused").benchmark == "mevis"
    assert MeViSDataModule(str(v1), tokenizer_path="unused", version="v2").benchmark == "mevis_v2"
    row = benchmark("mevis_v2")
    assert row.mask_format == "binary" and row.zip_prefix == "" and row.chunk_size == 24
    assert row.dataset_version == "v2" and row.no_target_scores and row.existence_threshold is not None
    assert benchmark("mevis").existence_threshold is None and benchmark("mevis").mask_format == "probability"
    with pytest.raises(ValueError, match="data.version must be one of"):
        MeViSDataModule(str(v1), tokenizer_path="unused", version="v3")
