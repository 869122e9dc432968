"""Tiny datasets in the Ref-YouTube-VOS layout for the evaluation tests: a split without public ground truth
(``valid_source``), one with masks (``train_source``) and Ref-DAVIS17-like videos (``davis_source``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.datasets import write_ytvos_dataset
from helpers.evaluation import DAVIS_VIDEOS

from mpgsam2.data import RefYTVOSSource


@pytest.fixture
def valid_source(tmp_path: Path) -> RefYTVOSSource:
    root = write_ytvos_dataset(
        tmp_path / "ytvos", "valid", annotations=False, obj_ids_in_json=False, test_videos=("vid_b",)
    )
    return RefYTVOSSource(root, "valid")


@pytest.fixture
def train_source(tmp_path: Path) -> RefYTVOSSource:
    return RefYTVOSSource(write_ytvos_dataset(tmp_path / "ytvos", "train"), "train")


@pytest.fixture
def davis_source(tmp_path: Path) -> RefYTVOSSource:
    return RefYTVOSSource(write_ytvos_dataset(tmp_path / "davis", "train", DAVIS_VIDEOS), "train")
