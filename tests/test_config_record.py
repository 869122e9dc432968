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
    ("refcoco_*", "data.holdout_videos"): (
        "<absent>",
        0,
        "from conf/data/shared.yaml: the data module's own default (no held-out videos)",
    ),
    ("refcoco_*", "data.val_max_frames"): (
        "<absent>",
        None,
        "from conf/data/shared.yaml: the data module's own default (every frame)",
    ),
    ("demo", "data.tokenizer_path"): (
        "<absent>",
        "/data/synthetic_ytvos/tokenizer.model",
        "stated in conf/data/synthetic.yaml (over the shared default): the path the data module chose itself",
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


# recipes added since the record, and the recorded experiment each must equal (the default size is large)
ADDED = {"ytvos": "ytvos_large", "mevis": "mevis_large", "refcoco": "refcoco_large"}


def test_every_recorded_experiment_still_exists() -> None:
    recorded = sorted(json.loads(RECORD.read_text()))
    assert sorted({*recorded, *ADDED}) == EXPERIMENTS


def _differences(experiment: str, recorded_as: str, *overrides: str) -> list[str]:
    recorded = _flatten(json.loads(RECORD.read_text())[recorded_as])
    now = _flatten(json.loads(json.dumps(resolved_experiment(experiment, *overrides))))
    unexplained = []
    for key in sorted(set(recorded) | set(now)):
        before, after = recorded.get(key, "<absent>"), now.get(key, "<absent>")
        if before == after:
            continue
        reason = _explained(experiment, key)
        if reason is None or (reason[0], reason[1]) != (before, after):
            unexplained.append(f"{key}: {before!r} -> {after!r}")
    return unexplained


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_resolved_config_equals_the_record(experiment: str) -> None:
    unexplained = _differences(experiment, ADDED.get(experiment, experiment))
    assert not unexplained, "\n".join(unexplained)


@pytest.mark.parametrize("size", ["large", "base", "tiny"])
@pytest.mark.parametrize("dataset", sorted(ADDED))
def test_a_dataset_recipe_with_a_size_equals_the_recorded_recipe_of_that_size(
    dataset: str, size: str
) -> None:
    unexplained = _differences(dataset, f"{dataset}_{size}", f"size={size}")
    assert not unexplained, "\n".join(unexplained)
