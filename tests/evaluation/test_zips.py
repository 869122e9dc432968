"""Submission zips (mpgsam2.evaluation.zips): the Ref-YouTube-VOS and MeViS layouts, and no zip left behind when
writing fails; from staging folders of tiny datasets with a fake predictor (no model)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers.datasets import default_ytvos_videos
from helpers.evaluation import PatternPredictor, stage_source
from PIL import Image

from mpgsam2.data import RefYTVOSSource
from mpgsam2.evaluation.staging import EvalTarget
from mpgsam2.evaluation.zips import write_submission_zip, write_zip


def _expected_names(source: RefYTVOSSource, prefix: str) -> set[str]:
    return {
        f"{prefix}{e.video.video_id}/{e.exp_id}/{name}.png"
        for e in source.expressions
        for name in e.video.frame_names
    }


def test_ytvos_submission_zip_has_exactly_the_expected_pngs(valid_source, tmp_path: Path) -> None:
    assert [v.video_id for v in valid_source.videos] == ["vid_a", "vid_c"]  # vid_b is a test video
    staging = stage_source(valid_source, tmp_path / "run", PatternPredictor())
    path = write_submission_zip(
        tmp_path / "run" / "submission.zip", staging, [EvalTarget(valid_source)], "ytvos"
    )
    spec = default_ytvos_videos()
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert set(names) == _expected_names(valid_source, "Annotations/") and len(names) == len(set(names))
        assert len(names) == 2 * 6 + 3 * 7
        for name in names:
            video = name.split("/")[1]
            with Image.open(zf.open(name)) as img:
                assert img.mode == "L"
                assert (img.height, img.width) == tuple(spec[video].get("size", (24, 32)))
                assert set(np.unique(np.asarray(img))) <= {0, 255}
    assert not (tmp_path / "run" / "submission.zip.tmp").exists()


def test_mevis_style_zip_has_the_videos_at_its_root(valid_source, tmp_path: Path) -> None:
    staging = stage_source(valid_source, tmp_path / "run", PatternPredictor(), "probability")
    path = write_submission_zip(tmp_path / "sub.zip", staging, [EvalTarget(valid_source)], "mevis")
    with zipfile.ZipFile(path) as zf:
        assert set(zf.namelist()) == _expected_names(valid_source, "")
        values = np.concatenate([np.asarray(Image.open(zf.open(n))).ravel() for n in zf.namelist()])
    assert values.min() == 0 and values.max() > 200 and not ((values > 0) & (values < 127)).any()
    with pytest.raises(ValueError, match="Ref-DAVIS17 has no submission server"):
        write_submission_zip(tmp_path / "d.zip", staging, [EvalTarget(valid_source)], "davis")


def test_zip_is_not_left_behind_when_writing_fails(valid_source, tmp_path: Path) -> None:
    staging = stage_source(valid_source, tmp_path / "run", PatternPredictor())
    (staging.root / "vid_c" / "2" / "00010.png").unlink()
    with pytest.raises(FileNotFoundError, match="00010.png"):
        write_submission_zip(tmp_path / "s.zip", staging, [EvalTarget(valid_source)], "ytvos")
    with pytest.raises(FileNotFoundError):
        write_zip(tmp_path / "t.zip", [("a.png", tmp_path / "missing.png")])
    assert not (tmp_path / "s.zip").exists() and not list(tmp_path.glob("*.tmp"))
