"""The tracking loop has one home: SAM 2's ``track_step`` is called from ``VideoSession.step`` only, nothing outside
``mpgsam2/modeling/`` reaches into the model's private members or its decoder's context cache, and sharing over
expressions is declared, never read from tensor strides (docs/architecture.md, "The path of a video")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mpgsam2"


def _sources() -> dict[Path, str]:
    return {path: path.read_text(encoding="utf-8") for path in sorted(PACKAGE.rglob("*.py"))}


def test_track_step_is_called_from_one_place() -> None:
    callers = []
    for path, text in _sources().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "track_step":
                callers.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert len(callers) == 1 and callers[0].startswith("modeling/mpgsam2.py:"), callers


def test_nothing_outside_modeling_reaches_into_the_model() -> None:
    private = re.compile(r"model\._|\.sam\._|sam_mask_decoder\._")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path, text in _sources().items()
        if "modeling" not in path.relative_to(PACKAGE).parts
        for number, line in enumerate(text.splitlines(), 1)
        if private.search(line)
    ]
    assert not offenders, offenders


def test_model_code_reads_no_strides() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path, text in _sources().items()
        if "modeling" in path.relative_to(PACKAGE).parts
        for number, line in enumerate(text.splitlines(), 1)
        if ".stride(" in line
    ]
    assert not offenders, offenders
