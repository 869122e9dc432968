"""Resumable staging: what to predict (:class:`EvalTarget`: a source and the staging folder its videos go to), the
per-unit folders that appear only when complete (:class:`StagingArea`) and the record of what a staging folder
holds (:func:`check_manifest`, ``staging.json``).

Predictions are written per *unit* (one video, or one video of one Ref-DAVIS17 annotator set). A unit is first
written into ``<staging>.partial/<unit>`` and renamed to ``<staging>/<unit>`` once all of its PNGs are on disk, so
after an interruption the finished units are skipped and a half-written one is redone (its partial folder is
cleared first). Layouts (the ``prediction files`` column of :mod:`mpgsam2.evaluation.benchmarks`, the same as the
folders a user may score with :func:`~mpgsam2.metrics.scoring.score_predictions`):

- Ref-YouTube-VOS and MeViS (v1 and v2): ``<staging>/<video>/<exp_id>/<frame>.png`` (mode ``L``);
- Ref-DAVIS17: ``<staging>/anno_<k>/<video>/<frame>.png`` (mode ``P``, DAVIS palette, one index per object);
- RefCOCO/+/g: ``<staging>/<sample_id>.png`` (mode ``L``, 0/255), each file its own unit: written into
  ``<staging>.partial/`` and renamed (:meth:`StagingArea.write_png`, :mod:`mpgsam2.inference.images`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpgsam2.data.records import ExpressionRecord, validate_path_component, validate_video_id
from mpgsam2.data.sources import ReferringVideoSource
from mpgsam2.evaluation.masks import save_png
from mpgsam2.utils import write_json_atomic

__all__ = ["EvalTarget", "StagingArea", "Unit", "check_manifest"]

log = logging.getLogger(__name__)

Unit = tuple[str, ...]  # a staging sub-path: (video,) or (annotator folder, video)


class StagingArea:
    """Per-unit folders that appear only when complete.

    Args:
        root: the staging folder (``<run dir>/staging``). Partial units live in the sibling ``<root>.partial``, so
            no video id can collide with them.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.partial_root = self.root.with_name(self.root.name + ".partial")

    def final_dir(self, unit: Unit) -> Path:
        return self.root.joinpath(*unit)

    def partial_dir(self, unit: Unit) -> Path:
        return self.partial_root.joinpath(*unit)

    def is_done(self, unit: Unit) -> bool:
        """Whether ``unit`` was completed (its final folder exists)."""
        return self.final_dir(unit).is_dir()

    def begin(self, unit: Unit) -> Path:
        """A fresh, empty partial folder for ``unit`` (a leftover of an interrupted run is removed first)."""
        tmp = self.partial_dir(unit)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, unit: Unit) -> Path:
        """Renames the partial folder of ``unit`` to its final place (atomic on one file system)."""
        final = self.final_dir(unit)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.partial_dir(unit), final)
        return final

    def has_file(self, name: str) -> bool:
        """Whether the single-file unit ``name`` (a relative path) was completed."""
        return self.root.joinpath(name).is_file()

    def write_png(self, name: str, values: np.ndarray, palette: list[int] | None = None) -> Path:
        """Writes the single-file unit ``<root>/<name>`` (uint8 (H, W) values, mode ``L`` or, with ``palette``,
        ``P``): into ``<root>.partial/<name>`` first, then renamed, so it appears whole or not at all."""
        tmp, final = self.partial_root.joinpath(name), self.root.joinpath(name)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        save_png(tmp, values, palette)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        return final

    def remove_partials(self) -> None:
        """Deletes ``<root>.partial`` (call once every process is done)."""
        if self.partial_root.exists():
            shutil.rmtree(self.partial_root)

    def clear(self) -> None:
        """Deletes every staged unit, finished or partial (a restart from scratch)."""
        self.remove_partials()
        if self.root.exists():
            shutil.rmtree(self.root)


def _check_ids(source: ReferringVideoSource, expr: ExpressionRecord) -> None:
    # The readers and records validate already; a writer must not trust that (any source can be plugged in).
    where = str(source.expressions_file)
    video = expr.video
    validate_video_id(video.video_id, where)
    validate_path_component(expr.exp_id, f"video {video.video_id!r}: expression id", where)
    for name in video.frame_names:
        validate_path_component(name, f"video {video.video_id!r}: frame name", where)


@dataclass(frozen=True)
class EvalTarget:
    """A source to predict and the staging sub-folder its units go to (a data module's ``eval_targets`` gives
    them: the split, its annotator sets, its captions swapped on request).

    Attributes:
        source: the split (its expressions in source order).
        folder: staging sub-folder (``"anno_0"`` for Ref-DAVIS17 annotator set 0), or None for the staging root.
        annotator: the Ref-DAVIS17 annotator set the source holds (scored per set), None elsewhere.
    """

    source: ReferringVideoSource
    folder: str | None = None
    annotator: int | None = None

    def units(self) -> list[tuple[Unit, list[int]]]:
        """(unit, expression indices) per video, videos in order of first appearance, ids validated."""
        groups: dict[str, list[int]] = {}
        for i, expr in enumerate(self.source.expressions):
            _check_ids(self.source, expr)
            groups.setdefault(expr.video.video_id, []).append(i)
        prefix: Unit = (
            () if self.folder is None else (validate_path_component(self.folder, "staging folder"),)
        )
        return [((*prefix, vid), indices) for vid, indices in groups.items()]


# settings added to the manifest later -> the value every earlier run used
_UNRECORDED_SETTINGS = {"precision": "fp32", "existence_threshold": None}


def check_manifest(
    path: str | os.PathLike[str],
    manifest: Mapping[str, Any],
    restart: bool = False,
    staging: StagingArea | None = None,
) -> None:
    """Records what a staging folder holds (the weights' content hash, the data and the settings), or checks a
    restarted run against it.

    Args:
        path: the manifest file beside the staging folder.
        manifest: what this run would stage.
        restart: when the staged predictions are of another evaluation, discard them (``staging``'s videos) and
            start over instead of refusing.

    Raises:
        ValueError: naming ``path``, when an earlier run staged predictions of another model (other weights,
            even under the same file name), dataset or setting there and ``restart`` is off (resuming would mix
            them).
    """
    path = Path(path)
    current = json.loads(json.dumps(manifest, sort_keys=True, default=str))
    if path.is_file():
        # a manifest written before a setting was recorded staged it at the only value it then had
        previous = {**_UNRECORDED_SETTINGS, **json.loads(path.read_text())}
        now = {**_UNRECORDED_SETTINGS, **current}
        if previous == now:
            return
        diff = {k: (previous.get(k), now.get(k)) for k in set(previous) | set(now)}
        diff = {k: v for k, v in diff.items() if v[0] != v[1]}
        if not restart:
            raise ValueError(
                f"{path}: this run folder holds predictions of another evaluation ({diff}, as (staged, now)); "
                "use a new run folder, or restart=true to discard them and start over"
            )
        log.warning("%s: discarding the staged predictions of another evaluation (%s)", path, sorted(diff))
        if staging is not None:
            staging.clear()
    write_json_atomic(path, current)
