"""`python -m mpgsam2.predict` on a folder of frames gives the masks of the evaluation path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from framework_helpers import TINY_SYNTHETIC, compose_config
from PIL import Image

import train as train_entry
from mpgsam2 import predict
from mpgsam2.data import ReferringCollate
from mpgsam2.lit_module import RVOSLitModule
from mpgsam2.losses import MPGSAM2Criterion
from mpgsam2.text.tokenizer import Beit3Tokenizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny demo model after 2 steps, its checkpoint and its data module."""
    tmp = tmp_path_factory.mktemp("predict")
    cfg = compose_config(
        "train",
        ["experiment=demo", *TINY_SYNTHETIC, "logger=none", "trainer.max_steps=2", "validate=false"],
        tmp,
    )
    train_entry.run(cfg)
    system, datamodule = train_entry.build_components(cfg)
    datamodule.setup("validate")
    return tmp / "run" / "checkpoints" / "final.ckpt", datamodule


def test_predict_cli_matches_the_evaluation_path(trained, tmp_path, capsys):
    ckpt, datamodule = trained
    expr = datamodule.val_dataset.source.expressions[0]
    out = tmp_path / "masks"
    assert predict.main([str(ckpt), str(expr.video.frame_paths[0].parent), expr.caption, str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    written = sorted(out.iterdir())
    assert [p.stem for p in written] == list(expr.video.frame_names)

    model, tokenizer_path = predict.load_model_for_inference(ckpt)
    assert tokenizer_path == datamodule.collate.tokenizer.spm_path.resolve()
    reference = RVOSLitModule(model, MPGSAM2Criterion(), torch.optim.AdamW).eval()
    batch = ReferringCollate(Beit3Tokenizer(tokenizer_path))([datamodule.val_dataset[0]])
    expected = (reference.predict_batch(batch)[0] > 0).numpy()
    masks = np.stack([np.array(Image.open(p)) > 0 for p in written])
    assert masks.shape == expected.shape
    assert (masks == expected).all()


def test_predict_refuses_to_overwrite_and_needs_frames(trained, tmp_path):
    ckpt, datamodule = trained
    expr = datamodule.val_dataset.source.expressions[0]
    out = tmp_path / "masks"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="masks"):
        predict.main([str(ckpt), str(expr.video.frame_paths[0].parent), "the red square", str(out)])
    assert (out / "keep.txt").read_text() == "mine"  # nothing lost
    empty = tmp_path / "no_frames"
    empty.mkdir()
    with pytest.raises(ValueError, match="no_frames"):
        predict.main([str(ckpt), str(empty), "the red square", str(tmp_path / "o")])
    with pytest.raises(Exception, match="not_a_ckpt"):
        bad = tmp_path / "not_a_ckpt.ckpt"
        bad.write_bytes(b"garbage")
        predict.main([str(bad), str(empty), "x", str(tmp_path / "o2")])
