"""RefCOCO end to end: a training step through train.py on a tiny converted dataset, then eval.py (mIoU, cIoU,
J&F); the staged PNGs (one per referring expression, resumable, sharded) score as the in-memory evaluation; a
folder of PNGs is scored with clear errors; and the image scores on perfect and empty predictions."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.configs import compose_config
from helpers.datasets import (
    REFCOCO_IMAGES,
    expected_refcoco_mask,
    item_meta,
    model_batch,
    write_refcoco_dataset,
)
from hydra.utils import instantiate
from PIL import Image

import eval as eval_entry
import train as train_entry
from mpgsam2.data import ClipTransform, DatasetError, RefCOCOSource, ReferringImageEvalDataset
from mpgsam2.data.synthetic import SyntheticConfig, generate_synthetic_ytvos
from mpgsam2.inference import StagingArea
from mpgsam2.inference import images as images_module
from mpgsam2.inference.images import evaluate_images, predict_images_to_staging
from mpgsam2.metrics.scoring import score_predictions
from mpgsam2.modeling.mpgsam2 import ImageOutput
from mpgsam2.weights import load_model

TINY_MODEL = [
    "model/beit3=test",
    "model/sam2=test",
    "model.weights.beit3=null",
    "model.weights.sam2=null",
    "trainer=cpu",
    "logger=none",
    "model.freeze_image_encoder=false",
]


@pytest.fixture(scope="module")
def coco_and_tokenizer(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("refcoco")
    for name in ("refcoco", "refcoco+", "refcocog"):
        write_refcoco_dataset(base / "coco", name, "train")
        write_refcoco_dataset(base / "coco", name, "val")
    syn = generate_synthetic_ytvos(
        base / "syn", SyntheticConfig(num_train_videos=1, num_valid_videos=1, num_frames=2)
    )
    return base / "coco", syn / "tokenizer.model"


def _train_config(tmp_path: Path, coco: Path, tokenizer: Path):  # noqa: ANN202
    return compose_config(
        "train",
        [
            "experiment=refcoco_tiny",
            *TINY_MODEL,
            f"data.root={coco}",
            f"data.tokenizer_path={tokenizer}",
            "data.batch_size=2",
            "data.num_workers=0",
            "trainer.max_steps=1",
            "validate=false",
            "~callbacks.rich_progress_bar",
        ],
        tmp_path,
    )


def test_refcoco_trains_through_train_py_and_scores_through_eval_py(tmp_path, coco_and_tokenizer):
    coco, tokenizer = coco_and_tokenizer
    cfg = _train_config(tmp_path, coco, tokenizer)
    train_entry.run(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "final.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 1

    eval_cfg = compose_config("eval", [f"ckpt={ckpt}"], tmp_path / "eval")
    metrics = eval_entry.run(eval_cfg)
    record = json.loads((tmp_path / "eval" / "run" / "metrics.json").read_text())
    assert record["dataset"] == "refcoco" and record["num_samples"] == 3  # refcoco/val
    for key in ("miou", "ciou", "j", "f", "jf"):
        assert 0.0 <= metrics[key] <= 1.0 and record[key] == pytest.approx(metrics[key])
    assert metrics["miou"] == pytest.approx(metrics["j"])  # J of a 1-frame video is its IoU
    assert eval_entry.final_line(metrics).startswith("j=")


class _Oracle(torch.nn.Module):
    """Returns the ground truth (or nothing) as logits at the SAM size, through the image path's signature."""

    def __init__(self, targets: list[torch.Tensor], empty: bool) -> None:
        super().__init__()
        self.targets, self.empty = targets, empty

    def forward_images(self, sam, beit, ids, pad):  # noqa: ANN001, ANN201
        masks = torch.stack([t.float() for t in self.targets])[:, None]  # [B, 1, H, W] at the original size
        logits = torch.where(masks > 0, 10.0, -10.0)
        b = logits.shape[0]
        return ImageOutput(
            pred_masks=torch.full_like(logits, -10.0) if self.empty else logits,
            sentence_scores=torch.zeros(b),
            prior_logits=torch.zeros(b, 1, 1),
        )


@pytest.mark.parametrize("empty", [False, True])
def test_image_scores_of_perfect_and_empty_predictions(empty):
    targets = [torch.from_numpy(expected_refcoco_mask(a)) for a in (1101, 1102)]
    targets = [t[:8, :8] for t in targets]  # same size so they batch
    batch = model_batch(
        torch.zeros(2, 1, 3, 8, 8),
        torch.zeros(2, 1, 3, 8, 8),
        torch.zeros(2, 3, dtype=torch.long),
        torch.zeros(2, 3, dtype=torch.bool),
        [item_meta("a", (8, 8)), item_meta("b", (8, 8))],
        orig_masks=[t[None] for t in targets],
        is_image=True,
    )
    scores = evaluate_images(_Oracle(targets, empty), [batch])
    nonempty = [bool(t.any()) for t in targets]
    if empty:
        expected = sum(not n for n in nonempty) / 2  # IoU 1 only where the target is empty too
        assert scores["miou"] == pytest.approx(expected)
        assert scores["ciou"] == pytest.approx(0.0 if any(nonempty) else 1.0)
    else:
        assert scores["miou"] == scores["ciou"] == scores["jf"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def refcoco_ckpt(tmp_path_factory, coco_and_tokenizer) -> Path:
    """A train.py checkpoint after one step on the tiny RefCOCO data (its run config names data=refcoco)."""
    tmp = tmp_path_factory.mktemp("refcoco_train")
    train_entry.run(_train_config(tmp, *coco_and_tokenizer))
    return tmp / "run" / "checkpoints" / "final.ckpt"


def _refcoco_val(coco: Path) -> RefCOCOSource:
    return RefCOCOSource(coco, "refcoco", "val")


def test_eval_stages_one_png_per_expression_scored_as_in_memory(tmp_path, coco_and_tokenizer, refcoco_ckpt):
    coco, _ = coco_and_tokenizer
    ckpt = refcoco_ckpt
    metrics = eval_entry.run(compose_config("eval", [f"ckpt={ckpt}"], tmp_path / "eval"))
    run_dir = tmp_path / "eval" / "run"
    staging = run_dir / "staging"
    source = _refcoco_val(coco)
    samples = [source.sample(i) for i in range(len(source))]
    # one 0/255 L PNG per referring expression, named by its sample id, at the image's original size
    assert sorted(p.name for p in staging.iterdir()) == sorted(f"{s.sample_id}.png" for s in samples)
    assert not (run_dir / "staging.partial").exists()
    for sample in samples:
        with Image.open(staging / f"{sample.sample_id}.png") as img:
            assert img.mode == "L" and img.size == (sample.width, sample.height)
            assert set(np.unique(np.asarray(img))) <= {0, 255}
    manifest = json.loads((run_dir / "staging.json").read_text())
    assert manifest["dataset"] == "refcoco" and manifest["sources"] == ["refcoco/val"] and manifest["weights"]

    # the in-memory evaluation of the same model on the same data module gives the same numbers
    loaded = load_model(str(ckpt))
    run_config = eval_entry.stored_run_config(ckpt, loaded.run_config)
    model = loaded.model.eval()
    dm = instantiate(run_config.data, **model.input_sizes)
    dm.setup("validate")
    in_memory = evaluate_images(model, dm.val_dataloader())
    assert set(metrics) == set(in_memory) and metrics["num_samples"] == 3
    for key, value in in_memory.items():
        assert metrics[key] == pytest.approx(value, rel=0, abs=1e-12), key
    assert json.loads((run_dir / "metrics.json").read_text())["sources"] == ["refcoco/val"]

    # eval.py predictions=<staging> (the data config from the checkpoint) and its zip score the same
    scored = eval_entry.run(
        compose_config("eval", [f"predictions={staging}", f"ckpt={ckpt}"], tmp_path / "s")
    )
    assert scored == metrics
    record = json.loads((tmp_path / "s" / "run" / "metrics.json").read_text())
    assert record["source"] == "refcoco/val" and record["miou"] == metrics["miou"]
    archive = tmp_path / "preds.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for png in staging.iterdir():
            zf.write(png, png.name)
    assert score_predictions(archive, source, "refcoco") == metrics


def test_eval_of_images_resumes_and_refuses_other_weights(tmp_path, refcoco_ckpt, monkeypatch):
    ckpt = refcoco_ckpt
    predicted: list[int] = []
    real = images_module.predict_image_masks

    def counting(model, batch, device="cpu", precision="fp32"):  # noqa: ANN001, ANN202
        predicted.extend(m.image.sample_id for m in batch.meta)
        return real(model, batch, device, precision)

    monkeypatch.setattr(images_module, "predict_image_masks", counting)
    first = eval_entry.run(compose_config("eval", [f"ckpt={ckpt}"], tmp_path))
    assert sorted(predicted) == [1, 2, 3]
    staging = tmp_path / "run" / "staging"
    kept = (staging / "1.png").stat().st_mtime_ns
    (staging / "2.png").unlink()  # as if the run had stopped before writing it
    predicted.clear()
    again = eval_entry.run(compose_config("eval", [f"ckpt={ckpt}"], tmp_path))
    assert predicted == [2] and again == first and (staging / "1.png").stat().st_mtime_ns == kept

    # other weights (their hash) in the same run folder: refused (naming the manifest), or restart=true
    monkeypatch.setattr("mpgsam2.evaluation.evaluate.weights_digest", lambda model: "other weights")
    with pytest.raises(ValueError, match="staging.json: this run folder holds predictions of another"):
        eval_entry.run(compose_config("eval", [f"ckpt={ckpt}"], tmp_path))
    predicted.clear()
    eval_entry.run(compose_config("eval", [f"ckpt={ckpt}", "restart=true"], tmp_path))
    assert sorted(predicted) == [1, 2, 3]


@pytest.mark.subprocess
def test_torchrun_shards_the_images_and_scores_as_one_process(tmp_path, refcoco_ckpt):
    """Two CPU processes (Gloo) each stage their share of the expressions; rank 0 scores the folder: the numbers of
    the single-process run, and the CLI prints j/f/jf last."""
    single = eval_entry.run(compose_config("eval", [f"ckpt={refcoco_ckpt}"], tmp_path / "single"))
    run_dir = tmp_path / "ddp"
    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "eval.py"]
    cmd += [f"ckpt={refcoco_ckpt}", "data.num_workers=0", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == (
        f"j={single['j']:.4f} f={single['f']:.4f} jf={single['jf']:.4f}"
    )
    logs = proc.stderr + proc.stdout + (run_dir / "eval.log").read_text()
    assert "rank 0/2: 2 of 3 images" in logs and "rank 1/2: 1 of 3 images" in logs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {k: metrics[k] for k in ("miou", "ciou", "num_samples")} == {
        k: single[k] for k in ("miou", "ciou", "num_samples")
    }


class _ConstantImages(torch.nn.Module):
    """A fixed square of foreground at the SAM size for every sample (the image path's signature)."""

    def forward_images(self, sam, beit, ids, pad):  # noqa: ANN001, ANN201
        b, _, s, _ = sam.shape
        logits = torch.full((b, 1, s, s), -5.0)
        logits[:, :, : s // 2, : s // 2] = 5.0
        return ImageOutput(
            pred_masks=logits, sentence_scores=torch.zeros(b), prior_logits=torch.zeros(b, 1, 1)
        )


def _image_dataset(coco: Path, tokenizer: Path):  # noqa: ANN202
    from mpgsam2.data import ReferringImageCollate
    from mpgsam2.text.tokenizer import Beit3Tokenizer

    dataset = ReferringImageEvalDataset(_refcoco_val(coco), ClipTransform(32, 16, train=False))
    return dataset, ReferringImageCollate(Beit3Tokenizer(tokenizer))


def test_image_predictions_shard_over_processes_and_skip_what_is_staged(tmp_path, coco_and_tokenizer):
    dataset, collate = _image_dataset(*coco_and_tokenizer)
    staging = StagingArea(tmp_path / "staging")
    # a leftover of an interrupted write is not a prediction
    staging.partial_root.mkdir(parents=True)
    (staging.partial_root / "1.png").write_bytes(b"half a png")
    shares = [
        predict_images_to_staging(
            _ConstantImages(), dataset, staging, collate=collate, batch_size=2, rank=rank, world=2
        )
        for rank in (0, 1)
    ]
    assert shares == [["1.png", "3.png"], ["2.png"]]  # round robin, disjoint, all of them
    assert predict_images_to_staging(_ConstantImages(), dataset, staging, collate=collate) == []
    with Image.open(staging.root / "1.png") as img:  # the partial leftover was replaced by a whole PNG
        assert img.size == REFCOCO_IMAGES["COCO_train2014_000000000011.jpg"][1][::-1]
    in_memory = evaluate_images(
        _ConstantImages(),
        [dataclasses.replace(collate([dataset[i]]), orig_masks=[dataset[i].orig_masks]) for i in range(3)],
    )
    assert score_predictions(staging.root, dataset.source, "refcoco") == in_memory


def _write_truth(folder: Path, source: RefCOCOSource) -> Path:
    folder.mkdir(parents=True)
    for i in range(len(source)):
        sample = source.sample(i)
        Image.fromarray(source.read_mask(sample).astype(np.uint8) * 255, mode="L").save(
            folder / f"{sample.sample_id}.png"
        )
    return folder


def test_scoring_a_folder_of_image_predictions(tmp_path, coco_and_tokenizer):
    coco, _ = coco_and_tokenizer
    source = _refcoco_val(coco)
    pred = _write_truth(tmp_path / "pred", source)

    def score():  # noqa: ANN202
        return eval_entry.run(
            compose_config("eval", [f"predictions={pred}", "data=refcoco", f"data.root={coco}"], tmp_path)
        )

    perfect = score()
    assert perfect["miou"] == perfect["ciou"] == perfect["jf"] == 1.0 and perfect["num_samples"] == 3
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["predictions"] == str(pred)

    # missing files: the first one named, and how many
    (pred / "2.png").rename(tmp_path / "2.png")
    (pred / "3.png").rename(tmp_path / "3.png")
    with pytest.raises(DatasetError, match=r"pred/2\.png: prediction PNG not found; 2 of the 3 predictions"):
        score()
    (tmp_path / "2.png").rename(pred / "2.png")
    # a PNG of another size than its image: the file and both sizes
    h, w = REFCOCO_IMAGES["COCO_train2014_000000000033.jpg"][1]
    Image.new("L", (w + 1, h)).save(pred / "3.png")
    with pytest.raises(
        DatasetError, match=rf"pred/3\.png: prediction is {w + 1}x{h} \(WxH\) but its image is {w}x{h}"
    ):
        score()


def test_compile_is_refused_on_images_before_anything_is_written(tmp_path, refcoco_ckpt):
    """compile=true compiles the video tracking; RefCOCO runs images, so the flag is an error, not ignored."""
    with pytest.raises(ValueError, match="compile applies to the video benchmarks"):
        eval_entry.run(compose_config("eval", [f"ckpt={refcoco_ckpt}", "compile=true"], tmp_path))
    assert not (tmp_path / "run" / "staging").exists() and not (tmp_path / "run" / "staging.json").exists()
