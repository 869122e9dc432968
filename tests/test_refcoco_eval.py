"""RefCOCO end to end: a training step through train.py on a tiny converted dataset, then eval.py (mIoU, cIoU,
J&F); and the image scores on perfect and empty predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from data_helpers import expected_refcoco_mask, model_batch, write_refcoco_dataset
from framework_helpers import compose_config

import eval as eval_entry
import train as train_entry
from mpgsam2.data.synthetic import SyntheticConfig, generate_synthetic_ytvos
from mpgsam2.inference.images import evaluate_images
from mpgsam2.modeling.mpgsam2 import ImageOutput

TINY_MODEL = [
    "model/beit3=tiny",
    "model/sam2=tiny",
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


def test_refcoco_trains_through_train_py_and_scores_through_eval_py(tmp_path, coco_and_tokenizer):
    coco, tokenizer = coco_and_tokenizer
    cfg = compose_config(
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
        [{"orig_size": (8, 8)}, {"orig_size": (8, 8)}],
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
