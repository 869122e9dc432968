"""eval.py end to end, in-process with composed configs: a tiny random model exported like a released folder,
tiny datasets in the official layouts: Ref-YouTube-VOS valid -> submission.zip, MeViS valid_u -> J&F and valid ->
zip, Ref-DAVIS17 -> four annotator sets, scoring an existing folder, a train.py checkpoint with swapped captions,
restarts, and the configuration errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.configs import TINY_SYNTHETIC, compose_config
from helpers.datasets import (
    davis_captions,
    expected_union_mask,
    write_davis_dataset,
    write_mevis_dataset,
    write_ytvos_dataset,
)
from helpers.tiny import make_tiny_model
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

import eval as eval_entry
from data_modules import UnsafeConfigError
from mpgsam2.data import MeViSSource, RefDAVISSource
from mpgsam2.data.synthetic import SyntheticConfig, generate_synthetic_ytvos
from mpgsam2.metrics import JFMetric
from mpgsam2.weights import save_mpgsam2
from mpgsam2.weights.checkpoints import RELEASED_TOKENIZER, LoadedModel, train_checkpoint_record

YTVOS_VIDEOS = {
    "va": {
        "num_frames": 3,
        "objects": {1: None, 2: [1]},
        "expressions": {"0": ("the red square", 1), "3": ("blue", 2)},
    },
    "vb": {
        "num_frames": 2,
        "size": (20, 28),
        "objects": {1: None},
        "expressions": {"1": ("a red square", 1)},
    },
    "vt": {"num_frames": 2, "objects": {1: None}, "expressions": {"0": ("a test video", 1)}},
}
MEVIS_VIDEOS = {
    "ma": {
        "num_frames": 3,
        "objects": {1: None, 2: [1, 2]},
        "expressions": {"0": ("both", [1, 2]), "1": ("red", [1])},
    },
    "mb": {
        "num_frames": 2,
        "size": (20, 28),
        "objects": {3: [0]},
        "expressions": {"0": ("green leaves", [3])},
    },
}
REPO = Path(__file__).resolve().parents[2]
DAVIS_VIDEOS = {
    "da": {
        "num_frames": 2,
        "objects": {1: None, 2: [0]},
        "expressions": {1: davis_captions(1), 2: davis_captions(2)},
    },
    "db": {"num_frames": 2, "size": (20, 28), "objects": {1: None}, "expressions": {1: davis_captions(1)}},
}


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model saved like a released folder: config.json + weights + sentencepiece.bpe.model."""
    base = tmp_path_factory.mktemp("weights")
    syn = generate_synthetic_ytvos(
        base / "syn", SyntheticConfig(num_train_videos=1, num_valid_videos=1, num_frames=2)
    )
    folder = save_mpgsam2(make_tiny_model(freeze_image_encoder=False), base / "released")
    (folder / RELEASED_TOKENIZER).write_bytes((syn / "tokenizer.model").read_bytes())
    return folder


def _cfg(tmp_path: Path, *overrides: str):
    # data.tokenizer_path points nowhere: the released folder's tokenizer must be the one used
    common = ["data.num_workers=0", f"data.tokenizer_path={tmp_path / 'missing.spm'}"]
    return compose_config("eval", [*overrides, *common], tmp_path)


def _ytvos_valid(tmp_path: Path) -> Path:
    """Ref-YouTube-VOS valid without public masks; video vt is a test video (left out of the zip)."""
    return write_ytvos_dataset(
        tmp_path / "ytvos",
        "valid",
        YTVOS_VIDEOS,
        annotations=False,
        obj_ids_in_json=False,
        test_videos=("vt",),
    )


def _png(data: bytes) -> np.ndarray:
    import io

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img), img.mode


def test_ytvos_valid_writes_the_submission_zip_and_resumes(released: Path, tmp_path: Path) -> None:
    root = _ytvos_valid(tmp_path)
    cfg = _cfg(tmp_path, f"ckpt={released}", "data=ytvos", f"data.root={root}")
    result = eval_entry.run(cfg)
    zip_path = tmp_path / "run" / "submission.zip"
    assert result == {"submission": str(zip_path)} and eval_entry.final_line(result) == str(zip_path)
    expected = {"Annotations/va/0/", "Annotations/va/3/", "Annotations/vb/1/"}
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(zf.namelist())
        assert {n.rsplit("/", 1)[0] + "/" for n in names} == expected  # the test video is left out
        assert names == sorted(
            [f"Annotations/va/{e}/{f:05d}.png" for e in ("0", "3") for f in (0, 5, 10)]
            + [f"Annotations/vb/1/{f:05d}.png" for f in (0, 5)]
        )
        for name in names:
            values, mode = _png(zf.read(name))
            assert mode == "L" and values.shape == ((20, 28) if "/vb/" in name else (24, 32))
            assert set(np.unique(values)) <= {0, 255}
        first = zip_path.read_bytes()
    assert not (tmp_path / "run" / "staging.partial").exists()

    # a restart in the same run folder predicts nothing again and gives the same zip
    staged = sorted(p.stat().st_mtime_ns for p in (tmp_path / "run" / "staging").rglob("*.png"))
    assert eval_entry.run(cfg) == result
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "run" / "staging").rglob("*.png")) == staged
    assert zip_path.read_bytes() == first


def test_interrupted_eval_finishes_with_the_same_zip(released: Path, tmp_path: Path, monkeypatch) -> None:
    root = _ytvos_valid(tmp_path)
    clean = eval_entry.run(_cfg(tmp_path / "clean", f"ckpt={released}", "data=ytvos", f"data.root={root}"))
    import mpgsam2.evaluation.evaluate as evaluate
    from mpgsam2.evaluation.runner import PerExpression

    real = evaluate.model_predictor
    calls = []

    def crashing(*args, **kwargs):
        predict = real(*args, **kwargs)

        def wrapped(batch):
            if len(calls) == 2:  # video va (2 expressions) is done, vb not
                raise KeyboardInterrupt
            calls.append(batch.meta[0].video)
            return predict(batch)

        return PerExpression(wrapped)  # one call per expression, so the crash falls between two videos

    cfg = _cfg(tmp_path / "b", f"ckpt={released}", "data=ytvos", f"data.root={root}")
    monkeypatch.setattr(evaluate, "model_predictor", crashing)
    with pytest.raises(KeyboardInterrupt):
        eval_entry.run(cfg)
    run_dir = tmp_path / "b" / "run"
    assert calls == ["va", "va"] and not (run_dir / "submission.zip").exists()
    assert sorted(p.name for p in (run_dir / "staging").iterdir()) == ["va"]
    monkeypatch.setattr(evaluate, "model_predictor", real)
    result = eval_entry.run(cfg)
    assert Path(result["submission"]).read_bytes() == Path(clean["submission"]).read_bytes()
    assert not [p for p in run_dir.rglob("*") if p.name.endswith((".tmp", ".partial"))]


def test_mevis_valid_u_scores_and_valid_writes_a_root_level_zip(released: Path, tmp_path: Path) -> None:
    root = write_mevis_dataset(tmp_path / "mevis", "valid_u", MEVIS_VIDEOS)
    write_mevis_dataset(root, "valid", MEVIS_VIDEOS, masks=False)
    cfg = _cfg(
        tmp_path / "u", f"ckpt={released}", "data=mevis", f"data.root={root}", "data.val_split=valid_u"
    )
    metrics = eval_entry.run(cfg)
    record = json.loads((tmp_path / "u" / "run" / "metrics.json").read_text())
    assert record["chunk_size"] == 24 and record["benchmark"] == "mevis" and record["num_expressions"] == 3
    assert record["dataset"] == "mevis"  # the deprecated name of the key, kept for one release
    assert {k: record[k] for k in ("j", "f", "jf")} == {k: metrics[k] for k in ("j", "f", "jf")}
    assert (
        eval_entry.final_line(metrics) == f"j={metrics['j']:.4f} f={metrics['f']:.4f} jf={metrics['jf']:.4f}"
    )
    # the score is JFMetric of the staged PNGs (non-zero = foreground) against the union of the anno_ids
    source = MeViSSource(root, "valid_u")
    metric = JFMetric()
    for expr in source.expressions:
        folder = tmp_path / "u" / "run" / "staging" / expr.video.video_id / expr.exp_id
        pred = np.stack([np.asarray(Image.open(folder / f"{n}.png")) for n in expr.video.frame_names])
        assert not ((pred > 0) & (pred < 127)).any()  # p < 0.5 -> 0, else p * 255
        spec = MEVIS_VIDEOS[expr.video.video_id]
        anno_ids = spec["expressions"][expr.exp_id][1]
        truth = np.stack([expected_union_mask(spec, anno_ids, t) for t in range(expr.video.num_frames)])
        metric.update(pred, truth)
    assert metrics["jf"] == pytest.approx(metric.compute()["jf"], abs=1e-12)

    cfg = _cfg(tmp_path / "v", f"ckpt={released}", "data=mevis", f"data.root={root}", "data.val_split=valid")
    result = eval_entry.run(cfg)
    with zipfile.ZipFile(result["submission"]) as zf:
        assert sorted(zf.namelist()) == sorted(
            [f"ma/{e}/{f:05d}.png" for e in ("0", "1") for f in range(3)]
            + [f"mb/0/{f:05d}.png" for f in range(2)]
        )


def test_davis_scores_the_four_annotator_sets(released: Path, tmp_path: Path) -> None:
    root = write_davis_dataset(tmp_path / "davis", "valid", DAVIS_VIDEOS)
    metrics = eval_entry.run(_cfg(tmp_path, f"ckpt={released}", "data=davis", f"data.root={root}"))
    assert set(metrics["annotators"]) == {"anno_0", "anno_1", "anno_2", "anno_3"}
    for key in ("j", "f"):
        assert metrics[key] == pytest.approx(np.mean([a[key] for a in metrics["annotators"].values()]))
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["annotators"] == metrics["annotators"] and record["num_objects"] == 3
    labels = np.asarray(Image.open(tmp_path / "run" / "staging" / "anno_3" / "da" / "00001.png"))
    assert labels.shape == (24, 32) and set(np.unique(labels)) <= {0, 1, 2}
    with pytest.raises(ValueError, match="no submission server"):
        eval_entry.run(
            _cfg(tmp_path / "s", f"ckpt={released}", "data=davis", f"data.root={root}", "submission=true")
        )


def test_predictions_mode_scores_an_existing_folder(tmp_path: Path) -> None:
    root = write_mevis_dataset(tmp_path / "mevis", "valid_u", MEVIS_VIDEOS)
    pred = tmp_path / "pred"
    for expr in MeViSSource(root, "valid_u").expressions:
        spec = MEVIS_VIDEOS[expr.video.video_id]
        (pred / expr.video.video_id / expr.exp_id).mkdir(parents=True)
        for t, name in enumerate(expr.video.frame_names):
            mask = expected_union_mask(spec, spec["expressions"][expr.exp_id][1], t)
            Image.fromarray(mask.astype(np.uint8) * 200).save(
                pred / expr.video.video_id / expr.exp_id / f"{name}.png"
            )
    cfg = _cfg(tmp_path, f"predictions={pred}", "data=mevis", f"data.root={root}", "data.val_split=valid_u")
    metrics = eval_entry.run(cfg)
    assert eval_entry.final_line(metrics) == "j=1.0000 f=1.0000 jf=1.0000"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["predictions"] == str(pred)
    next(pred.rglob("*.png")).unlink()
    with pytest.raises(Exception, match="prediction PNG not found"):
        eval_entry.run(
            _cfg(
                tmp_path / "b",
                f"predictions={pred}",
                "data=mevis",
                f"data.root={root}",
                "data.val_split=valid_u",
            )
        )

    davis = write_davis_dataset(tmp_path / "davis", "valid", DAVIS_VIDEOS)
    source = RefDAVISSource(davis, "valid")
    for k in range(4):
        for video in source.videos:
            (tmp_path / "dpred" / f"anno_{k}" / video.video_id).mkdir(parents=True)
            for t, name in enumerate(video.frame_names):
                ids = source.read_object_masks(video, [t])[0]
                Image.fromarray(ids).save(tmp_path / "dpred" / f"anno_{k}" / video.video_id / f"{name}.png")
    cfg = _cfg(tmp_path / "d", f"predictions={tmp_path / 'dpred'}", "data=davis", f"data.root={davis}")
    assert eval_entry.run(cfg)["jf"] == 1.0


def test_train_checkpoint_uses_its_data_config_and_swapped_captions(tmp_path: Path) -> None:
    train_cfg = compose_config(
        "train", ["experiment=demo", *TINY_SYNTHETIC, "logger=none"], tmp_path / "train"
    )
    model = instantiate(train_cfg.model)
    ckpt = tmp_path / "model.ckpt"
    run_config = OmegaConf.to_container(train_cfg, resolve=True)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    record = train_checkpoint_record(run_config, model, None)
    torch.save({"mpgsam2": record, "state_dict": state}, ckpt)
    data_dir = tmp_path / "train" / "data"
    plain = eval_entry.run(
        compose_config("eval", [f"ckpt={ckpt}", "data.val_max_frames=2"], tmp_path / "a", data_dir)
    )
    swapped = eval_entry.run(
        compose_config(
            "eval",
            [f"ckpt={ckpt}", "data.val_max_frames=2", "data.swap_expressions=true"],
            tmp_path / "b",
            data_dir,
        )
    )
    a = json.loads((tmp_path / "a" / "run" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "run" / "metrics.json").read_text())
    assert a["sources"] == ["ytvos/valid"] and b["sources"] == ["ytvos/valid+swapped"]
    assert a["checkpoint"] == str(ckpt) and a["chunk_size"] is None
    assert 0 < swapped["num_expressions"] <= plain["num_expressions"]
    # only the first 2 frames were predicted and scored
    staged = tmp_path / "a" / "run" / "staging"
    assert {len(list(d.glob("*.png"))) for d in staged.glob("*/*")} == {2}


def test_configuration_errors_are_explained(released: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ckpt=.*predictions="):
        eval_entry.run(_cfg(tmp_path / "a", "data=ytvos"))
    with pytest.raises(ValueError, match="select one with data="):
        eval_entry.run(compose_config("eval", [f"ckpt={released}"], tmp_path / "b"))
    root = write_mevis_dataset(tmp_path / "mevis", "valid", MEVIS_VIDEOS, masks=False)
    with pytest.raises(ValueError, match="no public ground truth.*submission=true"):
        eval_entry.run(
            _cfg(
                tmp_path / "c",
                f"ckpt={released}",
                "data=mevis",
                f"data.root={root}",
                "data.val_split=valid",
                "submission=false",
            )
        )
    for key in ("benchmark", "dataset"):  # dataset=: the deprecated name of benchmark=
        with pytest.raises(ValueError, match="unknown benchmark 'coco'"):
            eval_entry.run(
                _cfg(tmp_path / key, f"ckpt={released}", "data=mevis", f"data.root={root}", f"{key}=coco")
            )


def test_benchmark_is_the_key_and_dataset_its_deprecated_alias(tmp_path: Path, caplog) -> None:
    def name(*overrides: str) -> str | None:
        return eval_entry.benchmark_name(compose_config("eval", list(overrides), tmp_path))

    assert name() is None  # the data module's own row
    assert name("benchmark=mevis_v2") == "mevis_v2"
    with caplog.at_level("WARNING", logger="eval"):
        assert name("dataset=davis") == "davis"
        assert name("benchmark=davis", "dataset=davis") == "davis"
    assert caplog.messages == ["dataset=davis is deprecated (kept for one release): use benchmark=davis"] * 2
    with pytest.raises(ValueError, match="benchmark=ytvos and its deprecated name dataset=davis disagree"):
        name("benchmark=ytvos", "dataset=davis")


@pytest.mark.subprocess
def test_torchrun_shards_the_videos_and_prints_the_zip(released: Path, tmp_path: Path) -> None:
    """The one subprocess test: two CPU processes (Gloo) give the single-process zip; the CLI prints its path last."""
    root = _ytvos_valid(tmp_path)
    single = eval_entry.run(_cfg(tmp_path / "single", f"ckpt={released}", "data=ytvos", f"data.root={root}"))
    run_dir = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "eval.py",
        f"ckpt={released}",
        "data=ytvos",
        f"data.root={root}",
        "data.num_workers=0",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir / "submission.zip")
    assert "rank 1/2: 1 of 2 units" in proc.stderr + proc.stdout + (run_dir / "eval.log").read_text()
    assert (run_dir / "submission.zip").read_bytes() == Path(single["submission"]).read_bytes()


def test_mevis_valid_u_empty_predictions_score_the_frames_without_the_objects(tmp_path: Path) -> None:
    root = write_mevis_dataset(tmp_path / "mevis", "valid_u", MEVIS_VIDEOS)
    pred = tmp_path / "pred"
    expected = []
    for expr in MeViSSource(root, "valid_u").expressions:
        spec = MEVIS_VIDEOS[expr.video.video_id]
        folder = pred / expr.video.video_id / expr.exp_id
        folder.mkdir(parents=True)
        empty_frames = 0
        for t, name in enumerate(expr.video.frame_names):
            truth = expected_union_mask(spec, spec["expressions"][expr.exp_id][1], t)
            empty_frames += not truth.any()  # an empty prediction scores J = F = 1 there, 0 elsewhere
            Image.fromarray(np.zeros(truth.shape, np.uint8)).save(folder / f"{name}.png")
        expected.append(empty_frames / expr.video.num_frames)
    metrics = eval_entry.run(
        _cfg(tmp_path, f"predictions={pred}", "data=mevis", f"data.root={root}", "data.val_split=valid_u")
    )
    assert 0 < np.mean(expected) < 1  # the tiny dataset has a frame where the referred objects are absent
    for key in ("j", "f", "jf"):
        assert metrics[key] == pytest.approx(np.mean(expected), abs=1e-12)


def _demo_train_checkpoint(tmp_path: Path, edit=None) -> tuple[Path, Path]:
    """A train.py-style checkpoint of the tiny demo model (its run config stored as data); ``edit(run_config)``
    tampers with the stored config first. Returns (checkpoint, the demo's data folder)."""
    train_cfg = compose_config(
        "train", ["experiment=demo", *TINY_SYNTHETIC, "logger=none"], tmp_path / "train"
    )
    model = instantiate(train_cfg.model)
    record = train_checkpoint_record(OmegaConf.to_container(train_cfg, resolve=True), model, None)
    if edit is not None:  # a checkpoint from someone else: its stored run config may hold anything
        edit(record["config"])
    ckpt = tmp_path / "model.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"mpgsam2": record, "state_dict": state}, ckpt)
    return ckpt, tmp_path / "train" / "data"


@pytest.mark.parametrize("where", ["data._target_", "data.nested", "model"])
def test_a_checkpoint_s_stored_config_is_data_never_code(tmp_path: Path, where: str) -> None:
    """A checkpoint that loads with weights_only=True can still carry a config asking Hydra to call anything
    (here pathlib.Path.write_text): eval.py must refuse it, naming the file, and write nothing."""
    victim = tmp_path / "written_by_the_checkpoint.txt"
    # instantiated, this node writes the file (checked: hydra.utils.instantiate(payload) does)
    payload = {
        "_target_": "pathlib.Path.write_text",
        "_args_": [{"_target_": "pathlib.Path", "_args_": [str(victim)]}, "pwned"],
    }

    def edit(run_config: dict) -> None:
        if where == "data._target_":
            run_config["data"] = payload
        elif where == "data.nested":
            run_config["data"]["generator"] = payload
        else:
            run_config["model"] = payload

    ckpt, data_dir = _demo_train_checkpoint(tmp_path, edit)
    cfg = compose_config("eval", [f"ckpt={ckpt}", "data.val_max_frames=2"], tmp_path / "eval", data_dir)
    if where == "model":
        # the model is rebuilt from the stored model config alone; the run config's model node is never called
        eval_entry.run(cfg)
    else:
        with pytest.raises(UnsafeConfigError, match=rf"{ckpt}.*(refusing|_target_)"):
            eval_entry.run(cfg)
    assert not victim.exists()


def test_a_run_folder_staged_by_other_weights_is_refused_or_restarted(released: Path, tmp_path: Path) -> None:
    import shutil

    root = _ytvos_valid(tmp_path)
    args = ["data=ytvos", f"data.root={root}"]
    released = Path(shutil.copytree(released, tmp_path / "released"))  # the module's folder stays as it is
    first = eval_entry.run(_cfg(tmp_path, f"ckpt={released}", *args))
    zip_before = Path(first["submission"]).read_bytes()
    # the same folder name, other weights (a re-trained model written over the old export)
    other = make_tiny_model(freeze_image_encoder=False)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)
    save_mpgsam2(other, tmp_path / "other")
    for f in (tmp_path / "other").iterdir():
        if f.name != RELEASED_TOKENIZER:
            (released / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ValueError, match=r"staging.json: .*other evaluation.*weights.*restart=true"):
        eval_entry.run(_cfg(tmp_path, f"ckpt={released}", *args))
    assert Path(first["submission"]).read_bytes() == zip_before  # the refusal touched nothing
    again = eval_entry.run(_cfg(tmp_path, f"ckpt={released}", *args, "restart=true"))
    assert Path(again["submission"]).read_bytes() != zip_before  # every video predicted again


def test_a_checkpoint_s_data_keys_are_overridden_without_plus_and_typos_are_refused(tmp_path: Path) -> None:
    """data=checkpoint (the default) lists the keys a run may replace: given ones replace the stored values, the
    others (???) keep them; a key it does not list fails at compose time (struct mode)."""
    ckpt, data_dir = _demo_train_checkpoint(tmp_path)
    cfg = compose_config(
        "eval", [f"ckpt={ckpt}", "data.val_max_frames=2", "data.num_workers=0"], tmp_path / "eval", data_dir
    )
    assert OmegaConf.is_missing(cfg.data, "swap_expressions") and "_target_" not in cfg.data
    stored = OmegaConf.create(
        {"data": eval_entry.read_train_checkpoint(ckpt).stored["config"]["data"], "system": {}}
    )
    merged = eval_entry.data_config(cfg, stored)
    assert merged.val_max_frames == 2 and merged.num_workers == 0
    assert merged.swap_expressions is False and merged._target_ == stored.data._target_  # kept
    assert {k: merged[k] for k in merged if k not in ("val_max_frames", "num_workers")} == {
        k: v for k, v in stored.data.items() if k not in ("val_max_frames", "num_workers")
    }
    for typo in ("data.val_max_frame=2", "data.swap_expression=true", "split=valid", "tokenizer=/t.spm"):
        with pytest.raises(ConfigCompositionException):
            compose_config("eval", [f"ckpt={ckpt}", typo], tmp_path / "typo", data_dir)


def test_a_weights_folder_needs_a_dataset_even_with_data_keys_given(released: Path, tmp_path: Path) -> None:
    cfg = compose_config("eval", [f"ckpt={released}", "data.val_max_frames=2"], tmp_path)
    with pytest.raises(ValueError, match=r"select one with data=.*only a train\.py checkpoint"):
        eval_entry.run(cfg)
    assert not (tmp_path / "run").exists()


def test_a_released_folder_is_evaluated_with_its_own_tokenizer(released: Path, tmp_path: Path) -> None:
    """data.tokenizer_path is the one key; a folder that ships a tokenizer is evaluated with it, so the key may
    name the same tokenizer (anywhere) or nothing that exists, never another tokenizer (refused, writing nothing)."""
    own = released / RELEASED_TOKENIZER
    loaded = LoadedModel(model=None, tokenizer_path=own, run_config=None, path=released)
    copy = tmp_path / "copy.spm"
    copy.write_bytes(own.read_bytes())
    for given in (None, str(tmp_path / "missing.spm"), str(copy), str(own)):
        assert eval_entry.tokenizer_path(loaded, given) == str(own)
    # a train.py checkpoint ships no tokenizer file: data.tokenizer_path (its stored one unless replaced)
    ckpt = LoadedModel(model=None, tokenizer_path=own, run_config={}, path=tmp_path / "model.ckpt")
    assert eval_entry.tokenizer_path(ckpt, str(copy)) == str(copy)

    other = tmp_path / "other.spm"
    other.write_bytes(b"another sentencepiece model")
    root = write_mevis_dataset(tmp_path / "mevis", "valid_u", MEVIS_VIDEOS)
    args = [f"ckpt={released}", "data=mevis", f"data.root={root}", "data.num_workers=0"]
    with pytest.raises(
        ValueError, match=rf"data\.tokenizer_path={other} is not the tokenizer .*{RELEASED_TOKENIZER}"
    ):
        eval_entry.run(compose_config("eval", [*args, f"data.tokenizer_path={other}"], tmp_path / "a"))
    assert not (tmp_path / "a" / "run").exists()
    metrics = eval_entry.run(compose_config("eval", [*args, f"data.tokenizer_path={copy}"], tmp_path / "b"))
    record = json.loads((tmp_path / "b" / "run" / "staging.json").read_text())
    assert record["tokenizer"] == str(own) and 0 <= metrics["jf"] <= 1


def test_the_chunk_size_and_the_split_have_their_train_py_keys(released: Path, tmp_path: Path) -> None:
    root = write_mevis_dataset(tmp_path / "mevis", "valid_u", MEVIS_VIDEOS)
    write_mevis_dataset(root, "valid", MEVIS_VIDEOS, masks=False)
    base = [f"ckpt={released}", "data=mevis", f"data.root={root}", "model.hf_gamma_compat=false"]
    eval_entry.run(_cfg(tmp_path / "u", *base, "system.eval_chunk_size=2"))
    record = json.loads((tmp_path / "u" / "run" / "metrics.json").read_text())
    assert record["chunk_size"] == 2 and record["sources"] == ["mevis/valid_u"]  # data.val_split's default
    result = eval_entry.run(
        _cfg(tmp_path / "v", *base, "data.val_split=valid", "system.eval_chunk_size=null")
    )
    assert Path(result["submission"]).is_file()
    assert json.loads((tmp_path / "v" / "run" / "staging.json").read_text())["chunk_size"] is None


def test_precision_reaches_the_engine_and_a_run_folder_keeps_its_precision(
    released: Path, tmp_path: Path, monkeypatch
) -> None:
    """precision=bf16 predicts through predict_video in bf16 (CPU autocast here), compile=true compiles the image
    encoder and memory attention; a run folder staged in bf16 is not continued in fp32 (staging.json)."""
    import mpgsam2.inference.predictor as predictor_module

    seen, compiled = [], []
    real = predictor_module.predict_video
    monkeypatch.setattr(
        "mpgsam2.evaluation.runner.predict_video",
        lambda *a, **k: seen.append((k["precision"], k["compile"])) or real(*a, **k),
    )
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(type(fn.__self__).__name__) or fn)
    args = [f"ckpt={released}", "data=ytvos", f"data.root={_ytvos_valid(tmp_path)}"]
    result = eval_entry.run(_cfg(tmp_path, *args, "precision=bf16", "compile=true"))
    assert Path(result["submission"]).is_file()
    assert seen and set(seen) == {("bf16", True)}
    assert sorted(set(compiled)) == ["ImageEncoder", "MemoryAttention"]
    with pytest.raises(ValueError, match=r"staging.json: .*precision"):
        eval_entry.run(_cfg(tmp_path, *args))  # fp32 over a bf16 run folder
    with pytest.raises(ValueError, match=r"precision='int8': expected one of \['bf16', 'fp16', 'fp32'\]"):
        eval_entry.run(_cfg(tmp_path, *args, "precision=int8", "restart=true"))
    assert not (tmp_path / "run" / "staging.json").read_text().count("int8")  # refused before touching it
