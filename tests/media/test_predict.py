"""`python -m mpgsam2.predict` on a folder of frames gives the masks of the evaluation path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.tiny import make_tiny_model, tiny_preset
from PIL import Image

from mpgsam2 import predict
from mpgsam2.data import ReferringCollate
from mpgsam2.lit_module import RVOSLitModule
from mpgsam2.losses import MPGSAM2Criterion
from mpgsam2.media import MediaError
from mpgsam2.media.outputs import sentence_folder
from mpgsam2.text.tokenizer import Beit3Tokenizer


def test_predict_cli_matches_the_evaluation_path(trained, tmp_path, capsys):
    ckpt, datamodule = trained
    expr = datamodule.val_dataset.source.expressions[0]
    out = tmp_path / "masks"
    frames_dir = str(expr.video.frame_paths[0].parent)
    assert predict.main([str(ckpt), frames_dir, expr.caption, "--out", str(out), "--format", "png"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    assert [p.name for p in out.iterdir()] == [sentence_folder(0, expr.caption)]
    written = sorted((out / sentence_folder(0, expr.caption)).iterdir())
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
    frames_dir = str(expr.video.frame_paths[0].parent)
    out = tmp_path / "masks"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="masks"):
        predict.main([str(ckpt), frames_dir, "the red square", "--out", str(out)])
    assert (out / "keep.txt").read_text() == "mine"  # nothing lost
    empty = tmp_path / "no_frames"
    empty.mkdir()
    with pytest.raises(MediaError, match="no_frames"):
        predict.main([str(ckpt), str(empty), "the red square", "--out", str(tmp_path / "o")])
    with pytest.raises(Exception, match="not_a_ckpt"):
        bad = tmp_path / "not_a_ckpt.ckpt"
        bad.write_bytes(b"garbage")
        predict.main([str(bad), frames_dir, "x", "--out", str(tmp_path / "o2")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks", "no_frames", "not_a_ckpt.ckpt"]


def test_the_three_train_checkpoint_readers_share_one_reader_and_its_errors(tmp_path):
    """eval.py, predict and build_model(weights={"mpgsam2": x.ckpt}) read train.py files the same way: eval.py
    and predict through mpgsam2.weights.load_model, all three through read_train_checkpoint."""
    import eval as eval_entry
    from mpgsam2.build import build_model
    from mpgsam2.lit_module import CHECKPOINT_KEY
    from mpgsam2.weights import CheckpointError, load_model
    from mpgsam2.weights.checkpoints import TRAIN_CHECKPOINT_KEY, read_train_checkpoint

    assert TRAIN_CHECKPOINT_KEY == CHECKPOINT_KEY  # the key lit_module writes is the one read
    model = make_tiny_model(freeze_image_encoder=False)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    no_config = tmp_path / "no_config.ckpt"
    torch.save({"state_dict": {**state, "criterion.weight": torch.ones(1)}}, no_config)
    ckpt = read_train_checkpoint(no_config)
    assert ckpt.state_dict.keys() == model.state_dict().keys() and ckpt.stored == {}  # only "model." kept
    with pytest.raises(
        CheckpointError, match=r"no_config\.ckpt: not a train.py checkpoint.*'mpgsam2\.config'"
    ):
        eval_entry.stored_run_config(no_config, read_train_checkpoint(no_config).stored.get("config"))
    for load in (predict.load_model_for_inference, load_model):
        with pytest.raises(CheckpointError, match=r"no_config\.ckpt: .*'mpgsam2\.model_config'"):
            load(no_config)
    conf = dict(zip(("beit3", "sam2"), tiny_preset()))
    rebuilt = build_model(conf["beit3"], conf["sam2"], weights={"mpgsam2": str(no_config)})
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))

    bad = {
        "missing.ckpt": "checkpoint not found",
        "garbage.ckpt": r"corrupt or truncated torch checkpoint",
        "no_state.ckpt": r"not a train.py checkpoint \(no Lightning 'state_dict'",
        "other_module.ckpt": r"not a train.py checkpoint \(no Lightning 'state_dict' with 'model\.' weights",
    }
    (tmp_path / "garbage.ckpt").write_bytes(b"garbage")
    torch.save({"weights": state}, tmp_path / "no_state.ckpt")
    torch.save({"state_dict": {"net.w": torch.ones(1)}}, tmp_path / "other_module.ckpt")
    for name, message in bad.items():
        path = tmp_path / name
        for read in (load_model, predict.load_model_for_inference, read_train_checkpoint):
            with pytest.raises(CheckpointError, match=rf"{name}: {message}"):
                read(path)
        with pytest.raises(CheckpointError, match=rf"{name}: {message}"):
            build_model(conf["beit3"], conf["sam2"], weights={"mpgsam2": str(path)})
