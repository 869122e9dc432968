"""Submission zips: byte-stable archives of staged PNGs, written whole or not at all (a temporary name, then a
rename). The same staged files give the same zip bytes, whatever the number of processes or restarts."""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from mpgsam2.evaluation.benchmarks import Benchmark, benchmark
from mpgsam2.evaluation.staging import EvalTarget, StagingArea

__all__ = ["submission_entries", "write_submission_zip", "write_zip"]

log = logging.getLogger(__name__)

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same predictions give the same zip bytes


def write_zip(path: str | os.PathLike[str], entries: Iterable[tuple[str, Path]]) -> Path:
    """Writes ``(name in the archive, file)`` entries to ``path`` via ``<path>.tmp`` and a rename.

    Entries are sorted by name and carry a fixed time stamp and mode, so equal files give equal zip bytes.
    PNGs are stored without recompression (they are compressed already).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, file in sorted(entries):
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_STORED
                zf.writestr(info, Path(file).read_bytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def submission_entries(
    staging: StagingArea, targets: Sequence[EvalTarget], bench: Benchmark | str
) -> list[tuple[str, Path]]:
    """The files of a Ref-YouTube-VOS / MeViS submission, one per (video, expression, frame) of ``targets``.

    Raises:
        ValueError: the benchmark has no submission server (Ref-DAVIS17 and RefCOCO are scored locally).
        FileNotFoundError: a unit or PNG is missing from the staging folder (naming it).
    """
    bench = benchmark(bench) if isinstance(bench, str) else bench
    if bench.zip_prefix is None:
        raise ValueError(f"{bench.title} has no submission server: it is scored locally")
    entries = []
    for target in targets:
        for unit, indices in target.units():
            folder = staging.final_dir(unit)
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: video not predicted (staging incomplete)")
            for i in indices:
                expr = target.source.expressions[i]
                for name in expr.video.frame_names:
                    file = folder / expr.exp_id / f"{name}.png"
                    if not file.is_file():
                        raise FileNotFoundError(f"{file}: prediction missing from the staging folder")
                    entries.append((bench.zip_prefix + "/".join((*unit, expr.exp_id, f"{name}.png")), file))
    return entries


def write_submission_zip(
    path: str | os.PathLike[str], staging: StagingArea, targets: Sequence[EvalTarget], bench: Benchmark | str
) -> Path:
    """:func:`submission_entries` zipped to ``path`` (atomically, see :func:`write_zip`)."""
    path = write_zip(path, submission_entries(staging, targets, bench))
    log.info("submission written: %s", path)
    return path
