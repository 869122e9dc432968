"""The speed and memory scripts (benchmarks/) still run: each at its smallest size, checking what it checks (masks of
the two paths agree, files staged alike) and printing its table. They are run by hand for figures; this keeps them from
rotting when the code they call changes (a renamed argument broke ``eval_throughput.py`` once unnoticed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.mark.subprocess
def test_eval_throughput_compares_masks_and_prints_the_table(capsys: pytest.CaptureFixture) -> None:
    code = _load("eval_throughput").main(
        ["--frames", "2", "--ks", "2", "--repeats", "1", "--memory", "--sam-size", "64", "--threads", "1"]
    )
    out = capsys.readouterr().out
    assert code == 0, out  # 1 when the engine's masks differ from predict_expression's
    row = [line for line in out.splitlines() if line.startswith("| 2 | 2 |")]
    assert len(row) == 1 and row[0].rstrip().endswith("|"), out


def test_eval_end_to_end_stages_the_same_pngs_both_ways(capsys: pytest.CaptureFixture) -> None:
    code = _load("eval_end_to_end").main(
        ["--videos", "1", "--frames", "2", "--repeats", "1", "--sam-size", "64", "--threads", "1"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "files that differ: 0; pixels that differ: 0" in out, out
    assert "| engine |" in out, out


def test_eval_profile_times_each_module(capsys: pytest.CaptureFixture) -> None:
    assert _load("eval_profile").main(["--k", "2", "--frames", "2", "--sam-size", "64"]) == 0
    out = capsys.readouterr().out
    for label in ("BEiT-3", "Hiera image encoder (shared)", "memory attention", "mask decoder"):
        assert f"| {label} |" in out, out


def test_eval_memory_phases_names_each_phase(capsys: pytest.CaptureFixture) -> None:
    assert _load("eval_memory_phases").main(["--frames", "2", "--k", "2", "--sam-size", "64"]) == 0
    out = capsys.readouterr().out
    header = (
        "| T | BEiT-3 calls | context (mask prior) | decoder context projections | tracking, to the end |"
    )
    assert header in out and "| 2 | " in out, out


def _table(out: str) -> dict[str, list[str]]:
    """The final table of gpu_check.py: ``what (setting)`` -> the other cells."""
    lines = out[out.index("| what |") :].splitlines()[2:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    return {f"{row[0]} ({row[1]})": row[2:] for row in cells}


@pytest.mark.subprocess
def test_train_memory_measures_a_step_with_and_without_checkpointing(capsys: pytest.CaptureFixture) -> None:
    # two fresh processes, as the script measures (about 10 s on a quiet 2-core machine)
    args = ["--preset", "test", "--sam-size", "64", "--frames", "2", "--repeats", "1", "--threads", "1"]
    assert _load("train_memory").main(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| `[")]
    assert [row.split("|")[1].strip() for row in rows] == [
        "`[]`",
        "`[beit3, mask_prior, memory_attention, decoder_fusion]`",
    ], out
    assert all(float(row.split("|")[3]) > 0 for row in rows), out  # a growth was measured in each process


def test_train_memory_counts_the_paper_s_parameters_and_the_static_memory() -> None:
    train_memory = _load("train_memory")
    total, trainable = train_memory.parameter_counts("ytvos_large")
    # the paper: 919.4 M parameters, 706.7 M trainable
    assert (round(total / 1e5), round(trainable / 1e5)) == (9194, 7067)
    # 16 B per trainable parameter (fp32 weight, gradient, two AdamW moments) + 4 B per frozen one
    assert train_memory.static_bytes(10, 6, "DDP") == 4 * 10 + 12 * 6
    assert train_memory.static_bytes(10, 8, "ZeRO-2", devices=8) == 4 * 10 + 12 * 8 / 8
    assert train_memory.static_bytes(10, 8, "FSDP", devices=8) == 4 * 2 + 16 * 8 / 8
    # a per-frame cost growing by m per earlier frame: 100 + 10 (T - 1) + 2 T (T - 1) / 2 is recovered
    measured = {t: 100 + 10 * (t - 1) + t * (t - 1) for t in (1, 2, 3)}
    assert train_memory.extrapolate(measured, 8)[0] == 100 + 10 * 7 + 8 * 7
    assert train_memory.extrapolate({1: 100, 2: 130}, 5)[0] == 100 + 30 * 4


def test_train_memory_prints_the_recipe_table_from_measurements(
    tmp_path, capsys: pytest.CaptureFixture
) -> None:
    gib = 2**30
    # 1 GiB + 1 GiB per frame of fp32 activations without checkpointing, half that with
    measured = {"tiny": {"none": {"1": 2 * gib, "2": 3 * gib}, "all": {"1": gib, "2": 1.5 * gib}}}
    (tmp_path / "m.json").write_text(json.dumps(measured))
    args = ["--recipes", "--sizes", "tiny", "--measured", str(tmp_path / "m.json")]
    assert _load("train_memory").main(args) == 0
    out = capsys.readouterr().out
    rows = {
        tuple(c.strip() for c in line.split("|")[1:5]): line for line in out.splitlines() if "_tiny |" in line
    }
    assert len(rows) == 2 * 3 * 2, out  # 2 datasets x 3 strategies x with / without
    # MeViS (8 frames) without checkpointing: 9 GiB fp32, 4.5 GiB in bf16
    assert "| 4.5 |" in rows[("mevis_tiny", "8", "DDP", "none")], out
    assert "| 2.2 |" in rows[("mevis_tiny", "8", "DDP", "all")], out


@pytest.mark.slow
def test_gpu_check_smoke_runs_on_the_cpu(capsys: pytest.CaptureFixture) -> None:
    gpu_check = _load("gpu_check")
    assert gpu_check.main(["--smoke"]) in (0, None)
    out = capsys.readouterr().out
    assert "cpu (smoke)" in out
    table = _table(out)
    timed = [key for key, cells in table.items() if cells[0].replace(".", "", 1).isdigit()]
    assert len(timed) >= 5, out  # predict_video fp32 / bf16 at K = 1 and 4, the training step
    assert any(key.startswith("train step bf16-mixed (") for key in timed), out
    checkpointed = [cells for key, cells in table.items() if "activation checkpointing" in key]
    assert len(checkpointed) == 1, out
    if gpu_check.activation_checkpointing_available():
        assert checkpointed[0][0].replace(".", "", 1).isdigit(), out  # measured on a checkpointed model
    else:
        assert checkpointed[0][0] == "n/a: activation checkpointing not available", out


def test_gpu_check_prints_the_table_with_the_rows_past_its_budget_skipped(
    capsys: pytest.CaptureFixture,
) -> None:
    assert _load("gpu_check").main(["--smoke", "--budget-s", "0"]) in (0, None)
    table = _table(capsys.readouterr().out)
    assert len(table) == 6 and all(cells[0].startswith(("skipped", "n/a")) for cells in table.values()), table


def test_streaming_memory_holds_a_window_and_keep_all_every_frame(capsys: pytest.CaptureFixture) -> None:
    _load("streaming_memory").main(["--frames", "4", "20", "--device", "cpu"])
    out = capsys.readouterr().out
    rows = {(r[0], r[1]): r[2:] for r in (line.split() for line in out.splitlines()[2:]) if len(r) >= 5}
    assert set(rows) == {("4", "streaming"), ("4", "keep-all"), ("20", "streaming"), ("20", "keep-all")}, out
    # the tiny model reads 6 earlier memories and 15 earlier pointers: after 20 frames the stream holds the
    # conditioning frame and frames 5..19; kept all, the 20 frames
    assert rows[("20", "streaming")][1] == "16" and rows[("20", "keep-all")][1] == "20", out
    assert float(rows[("20", "streaming")][0]) < float(rows[("20", "keep-all")][0]), out
    assert rows[("4", "streaming")][:2] == rows[("4", "keep-all")][:2], out  # nothing to drop yet
