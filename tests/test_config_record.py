"""Config refactors change no number: every experiment's resolved model / data / system / trainer trees equal the
copy recorded before the refactors (tests/data/resolved_experiments.json), except the differences listed here,
each with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from framework_helpers import EXPERIMENTS, resolved_experiment

RECORD = Path(__file__).parent / "data" / "resolved_experiments.json"

# (experiment or "*", dotted key) -> (recorded value, value now, why the computed numbers stay the same)
EXPLAINED = {
    ("*", "system.eval_chunk_size"): (
        None,
        "auto",
        "auto resolves at setup to the benchmark's chunk size (mpgsam2/benchmarks.py): null for all but MeViS",
    ),
    ("mevis_*", "system.eval_chunk_size"): (
        24,
        "auto",
        "auto resolves to MeViS's 24 (mpgsam2/benchmarks.py)",
    ),
}


def _flatten(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def _explained(experiment: str, key: str) -> tuple | None:
    family = experiment.split("_")[0] + "_*"
    return EXPLAINED.get((experiment, key)) or EXPLAINED.get((family, key)) or EXPLAINED.get(("*", key))


def test_every_recorded_experiment_still_exists() -> None:
    assert sorted(json.loads(RECORD.read_text())) == EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_resolved_config_equals_the_record(experiment: str) -> None:
    recorded = _flatten(json.loads(RECORD.read_text())[experiment])
    now = _flatten(json.loads(json.dumps(resolved_experiment(experiment))))
    unexplained = []
    for key in sorted(set(recorded) | set(now)):
        before, after = recorded.get(key, "<absent>"), now.get(key, "<absent>")
        if before == after:
            continue
        reason = _explained(experiment, key)
        if reason is None or (reason[0], reason[1]) != (before, after):
            unexplained.append(f"{key}: {before!r} -> {after!r}")
    assert not unexplained, "\n".join(unexplained)
