"""Config refactors change no number: every experiment's resolved model / data / system / trainer trees equal the
copy recorded before the refactors (tests/fixtures/resolved_experiments.json), except the differences listed here,
each with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.configs import EXPERIMENTS, resolved_experiment

RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "resolved_experiments.json"

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
    ("*", "trainer.num_nodes"): (
        "<absent>",
        1,
        "stated in conf/trainer/default.yaml: Lightning's own default (one machine)",
    ),
    ("*", "model.activation_checkpointing"): (
        "<absent>",
        [],
        "added later; [] recomputes nothing (and recomputing gives the same gradients: test_activation_checkpointing)",
    ),
    ("*", "system.existence_threshold"): (
        "<absent>",
        "auto",
        "auto resolves to the benchmark's (mpgsam2/benchmarks.py): off for every recorded recipe (MeViS v1 included)",
    ),
    ("*", "system.criterion.weights.object_score"): (
        "<absent>",
        0.0,
        "the object-score loss added for MeViS v2 (issue 19); 0 = the original's criterion, LossWeights' default",
    ),
    ("demo", "system.criterion.weights.object_score"): (
        "<absent>",
        1.0,
        "deliberate (issue 19): the demo's synthetic videos have no-target expressions; the object-score loss "
        "teaches SAM 2's head 'absent' (docs/demo.md 'What the demo reaches' has the demo's new numbers)",
    ),
    ("demo", "system.existence_threshold"): (
        "<absent>",
        0.7,
        "deliberate (issue 19): the demo runs MeViS v2's existence decision at the v2 default",
    ),
    ("mevis_*", "data.version"): (
        "<absent>",
        None,
        "MeViS v1 or v2 (issue 19); null detects it from the files, v1 for every folder the record was made for",
    ),
    ("demo", "data.tokenizer_path"): (
        "<absent>",
        "/data/synthetic_ytvos/tokenizer.model",
        "stated in conf/data/synthetic.yaml (over the shared default): the path the data module chose itself",
    ),
    ("*", "trainer.accumulate_grad_batches"): (
        1,
        None,
        "null: train.py derives it from global_batch_size (train.yaml, the recipes): 1 on the paper's 8 GPUs x 1 "
        "clip, and 1 without a global batch (the demo)",
    ),
}

# deliberate changes of a recipe's SAM 2 settings since the record: (experiment) -> (settings now, why)
SAM2_CHANGED = {
    "demo": (
        {"pred_obj_scores": True, "pred_obj_scores_mlp": True, "fixed_no_obj_ptr": True},
        "issue 19: the object-score head on, for the demo's no-target expressions (conf/experiment/demo.yaml)",
    ),
}

# keys under these prefixes changed form; what they build is compared instead (test below)
CHANGED_FORM = {
    "model.sam2.overrides": "SAM 2 settings are one nested mapping now (model.sam2.settings), not override strings",
    "model.sam2.settings": "the flat dotted keys became a nested mapping",
    "model.beit3": "BEiT-3 base / large name their preset (model.beit3.preset) instead of restating its numbers",
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
ADDED = {
    "ytvos": "ytvos_large",
    "mevis": "mevis_large",
    "mevis_v2": "mevis_v2_large",
    "refcoco": "refcoco_large",
}


def test_every_recorded_experiment_still_exists() -> None:
    recorded = sorted(json.loads(RECORD.read_text()))
    assert sorted({*recorded, *ADDED}) == EXPERIMENTS


def _differences(experiment: str, recorded_as: str, *overrides: str) -> list[str]:
    recorded = _flatten(json.loads(RECORD.read_text())[recorded_as])
    now = _flatten(json.loads(json.dumps(resolved_experiment(experiment, *overrides))))
    unexplained = []
    for key in sorted(set(recorded) | set(now)):
        before, after = recorded.get(key, "<absent>"), now.get(key, "<absent>")
        if before == after or any(key.startswith(prefix) for prefix in CHANGED_FORM):
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


def _old_sam2_config(recorded_sam2: dict) -> dict:
    """The SAM 2 config the recorded tree built before the change: ``overrides`` strings, then each flat
    ``settings`` key as one more ``++model.<key>=<value>`` (set in place here, as the string parser did)."""
    from mpgsam2.build import sam2_config_name
    from mpgsam2.modeling.sam2.presets import apply_overrides, sam2_model_config

    name = sam2_config_name(str(recorded_sam2["size"]), str(recorded_sam2["version"]))
    model = apply_overrides(sam2_model_config(name), list(recorded_sam2.get("overrides") or []))
    for dotted, value in (recorded_sam2.get("settings") or {}).items():
        *parents, leaf = dotted.split(".")
        node = model
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return model


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_the_sam2_config_built_equals_the_recorded_one(experiment: str) -> None:
    """model.sam2.overrides (strings) became model.sam2.settings (a nested mapping): the SAM 2 config the model
    is built from is the same."""
    from mpgsam2.build import sam2_config_name
    from mpgsam2.modeling.sam2.presets import merge_settings, sam2_model_config

    recorded = json.loads(RECORD.read_text())[ADDED.get(experiment, experiment)]["model"]["sam2"]
    now = resolved_experiment(experiment)["model"]["sam2"]
    built = merge_settings(sam2_model_config(sam2_config_name(now["size"], now["version"])), now["settings"])
    expected = _old_sam2_config(recorded)
    if experiment in SAM2_CHANGED:
        changed = SAM2_CHANGED[experiment][0]
        assert {k: built[k] for k in changed} == changed and {k: expected[k] for k in changed} != changed
        expected = {**expected, **changed}
    assert built == expected


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_the_beit3_config_built_equals_the_recorded_one(experiment: str) -> None:
    from mpgsam2.build import beit3_config

    recorded = json.loads(RECORD.read_text())[ADDED.get(experiment, experiment)]["model"]["beit3"]
    assert beit3_config(resolved_experiment(experiment)["model"]["beit3"]) == recorded
