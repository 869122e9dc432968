"""Ref-DAVIS17 reader and DataModule, on tiny datasets in ReferFormer's converted layout written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.configs import composed_data_config
from helpers.datasets import (
    check_first_training_batch,
    davis_captions,
    default_davis_videos,
    edit_json,
    expected_mask,
    mevis_frame_names,
    model_view_sizes,
    write_davis_dataset,
)
from helpers.tiny import make_tiny_model
from PIL import Image

from data_modules import RefDAVISDataModule
from mpgsam2.data import (
    DAVIS_ANNOTATORS,
    DatasetError,
    RefDAVISSource,
    ReferringVideoSource,
    davis_annotator,
)
from mpgsam2.data.synthetic import davis_palette

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_davis_dataset(tmp_path / "ref-davis", "valid")


def _json(root: Path, split: str = "valid") -> Path:
    return root / "meta_expressions" / split / "meta_expressions.json"


# ------------------------------------------------------------------------------------------------ the reader


def test_davis_records_follow_the_converter_numbering(root: Path) -> None:
    src = RefDAVISSource(root, "valid")
    assert isinstance(src, ReferringVideoSource)
    assert src.name == "davis/valid" and src.has_masks and len(DAVIS_ANNOTATORS) == 4
    assert [v.video_id for v in src.videos] == ["dv_a", "dv_b"]
    assert src.videos[0].frame_names == tuple(mevis_frame_names(5))
    got = [
        (e.video.video_id, e.exp_id, src.annotator_of(e), src.object_of(e), e.caption)
        for e in src.expressions
    ]
    expected = [
        (vid, str(4 * j + k), k, obj, davis_captions(obj)[k])
        for vid, spec in default_davis_videos().items()
        for j, obj in enumerate(sorted(spec["expressions"]))
        for k in range(4)
    ]
    assert got == expected
    assert [davis_annotator(i) for i in ("0", "5", "10", "15")] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="not an integer string"):
        davis_annotator("a")


def test_davis_annotator_sets_split_the_expressions(root: Path) -> None:
    everything = RefDAVISSource(root, "valid")
    seen = []
    for k in range(4):
        src = RefDAVISSource(root, "valid", annotator=k)
        assert src.name == f"davis/valid/anno{k}"
        # one expression per object: dv_a objects 1 and 2, dv_b object 1
        assert [(e.video.video_id, e.obj_ids) for e in src.expressions] == [
            ("dv_a", (1,)),
            ("dv_a", (2,)),
            ("dv_b", (1,)),
        ]
        assert all(src.annotator_of(e) == k for e in src.expressions)
        assert [e.caption for e in src.expressions] == [davis_captions(o)[k] for o in (1, 2, 1)]
        seen += [(e.video.video_id, e.exp_id) for e in src.expressions]
    assert sorted(seen) == sorted((e.video.video_id, e.exp_id) for e in everything.expressions)
    for bad in (4, -1):
        with pytest.raises(ValueError, match="annotator must be None or 0..3"):
            RefDAVISSource(root, "valid", annotator=bad)
    with pytest.raises(ValueError, match="split must be one of"):
        RefDAVISSource(root, "test")


def test_davis_masks_are_exact(root: Path) -> None:
    src = RefDAVISSource(root, "valid", annotator=2)
    spec = default_davis_videos()
    for expr in src.expressions:
        n = expr.video.num_frames
        masks = src.read_masks(expr, list(range(n)))
        vspec = spec[expr.video.video_id]
        assert masks.dtype == bool and masks.shape == (n, *vspec.get("size", (24, 32)))
        for t in range(n):
            assert np.array_equal(masks[t], expected_mask(vspec, expr.obj_ids[0], t))
    blue = src.expressions[1]
    assert src.read_masks(blue, [2, 3, 4]).sum(axis=(1, 2)).tolist() == [25, 0, 0]  # object 2 leaves
    ids = src.read_object_masks(blue.video, [0, 4])
    assert (
        ids.dtype == np.uint8
        and sorted(np.unique(ids[0])) == [0, 1, 2]
        and sorted(np.unique(ids[1])) == [0, 1]
    )
    frames = src.read_frames(src.videos[1], [0, 2])
    assert frames.shape == (2, 20, 28, 3) and frames.dtype == np.uint8
    assert src.annotation_palette() == davis_palette()


def test_davis_train_split_and_missing_annotations(tmp_path: Path) -> None:
    root = write_davis_dataset(tmp_path, "train")
    src = RefDAVISSource(root, "train")
    assert src.name == "davis/train" and src.has_masks and len(src.expressions) == 12
    write_davis_dataset(tmp_path, "valid", annotations=False)
    valid = RefDAVISSource(root, "valid")
    assert not valid.has_masks and valid.annotation_palette() is None
    with pytest.raises(DatasetError, match=r"valid/Annotations: folder not found"):
        valid.read_masks(valid.expressions[0], [0])


# ------------------------------------------------------------------------------------------------ bad input


def _exps(d: dict, vid: str = "dv_a") -> dict:
    return d["videos"][vid]["expressions"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("videos"), "missing the top-level 'videos'"),
        (lambda d: d["videos"]["dv_a"].pop("frames"), "video 'dv_a': 'frames' must be a non-empty list"),
        (lambda d: d["videos"]["dv_a"].pop("expressions"), "video 'dv_a': missing 'expressions'"),
        (lambda d: _exps(d)["3"].pop("exp"), "expression '3': missing the sentence"),
        (lambda d: _exps(d)["3"].pop("obj_id"), "expression '3': missing 'obj_id'"),
        (lambda d: _exps(d)["3"].update(obj_id="one"), "'obj_id' must be an integer string"),
        (lambda d: _exps(d)["3"].update(obj_id="256"), "outside the palette's object range"),
        (lambda d: _exps(d).update(first=_exps(d)["0"]), "expression ids must be integer strings"),
        (lambda d: _exps(d)["4"].update(obj_id="1"), "expressions '0' and '4' of annotator set 0 both refer"),
        (lambda d: d["videos"]["dv_a"]["frames"].append("00000"), "lists a frame twice"),
        (
            lambda d: d["videos"]["dv_a"]["frames"].append("../f"),
            "frame name '../f' contains a path separator",
        ),
        (
            lambda d: _exps(d).update({"../8": _exps(d)["0"]}),
            "expression id '../8' contains a path separator",
        ),
        (lambda d: d["videos"].update({"../x": d["videos"]["dv_a"]}), "video id '../x' contains a path sep"),
        (lambda d: d["videos"].update({"/abs": d["videos"]["dv_a"]}), "video id '/abs' contains a path sep"),
    ],
)
def test_davis_bad_expressions_file_is_named(root: Path, edit, message: str) -> None:
    path = edit_json(_json(root), edit)
    with pytest.raises(DatasetError, match=message) as info:
        RefDAVISSource(root, "valid")
    assert str(info.value).startswith(str(path))


def test_davis_malformed_or_missing_json_is_named(root: Path) -> None:
    _json(root).write_text("[1, 2")
    with pytest.raises(
        DatasetError, match=r"meta_expressions.json: the Ref-DAVIS17 expressions file is not valid"
    ):
        RefDAVISSource(root, "valid")
    _json(root).write_text("[1, 2]")
    with pytest.raises(
        DatasetError, match=r"meta_expressions.json: the Ref-DAVIS17 expressions file must hold"
    ):
        RefDAVISSource(root, "valid")
    with pytest.raises(
        DatasetError, match=r"train/meta_expressions.json: Ref-DAVIS17 expressions file not found"
    ):
        RefDAVISSource(root, "train")


def test_davis_unknown_object_names_the_annotations_and_json(root: Path) -> None:
    edit_json(_json(root), lambda d: [_exps(d)[str(i)].update(obj_id="7") for i in range(4, 8)])
    src = RefDAVISSource(root, "valid", annotator=1)
    expr = src.expressions[1]
    with pytest.raises(DatasetError) as info:
        src.read_masks(expr, [0, 1])
    message = str(info.value)
    assert message.startswith(str(root / "valid" / "Annotations" / "dv_a"))
    assert "object [7] of expression '5'" in message and str(_json(root)) in message
    assert "object ids found: [1, 2]" in message


def _annotation(root: Path, vid: str = "dv_a", name: str = "00001") -> Path:
    return root / "valid" / "Annotations" / vid / f"{name}.png"


def test_davis_bad_annotation_png_is_named(root: Path) -> None:
    src = RefDAVISSource(root, "valid")
    expr = src.expressions[0]
    path = _annotation(root)
    good = path.read_bytes()
    Image.open(path).convert("RGB").save(path)  # an RGB rendering: object ids cannot be recovered
    with pytest.raises(DatasetError, match=r"00001.png: annotation is a 'RGB' image, not a palette"):
        src.read_masks(expr, [0, 1])
    small = Image.fromarray(np.zeros((24, 30), np.uint8))
    small.putpalette(davis_palette())
    small.save(path)
    with pytest.raises(DatasetError, match=r"00001.png: annotation is 30x24 \(WxH\) but its frame is 32x24"):
        src.read_masks(expr, [1])
    path.write_bytes(good[:60])
    with pytest.raises(DatasetError, match=r"00001.png: cannot decode the annotation mask"):
        src.read_masks(expr, [1])
    path.unlink()
    with pytest.raises(DatasetError, match=r"00001.png: annotation mask not found"):
        src.read_masks(expr, [1])


def test_davis_missing_or_truncated_frame_is_named(root: Path) -> None:
    src = RefDAVISSource(root, "valid")
    video = src.videos[0]
    video.frame_paths[3].unlink()
    with pytest.raises(DatasetError, match=r"dv_a/00003.jpg: frame image not found"):
        src.read_frames(video, [2, 3])
    with pytest.raises(DatasetError, match=r"dv_a/00003.jpg: image file not found"):
        src.read_masks(src.expressions[0], [3])
    video.frame_paths[4].write_bytes(video.frame_paths[4].read_bytes()[:300])
    with pytest.raises(DatasetError, match=r"dv_a/00004.jpg: cannot decode the frame image"):
        src.read_frames(video, [4])


# ------------------------------------------------------------------------------------------------ DataModule


def test_davis_datamodule_trains_one_step(tmp_path: Path, tokenizer_path: Path) -> None:
    root = write_davis_dataset(tmp_path, "train")
    write_davis_dataset(tmp_path, "valid")
    model = make_tiny_model(freeze_image_encoder=False)
    dm = RefDAVISDataModule(
        root=str(root),
        annotator=3,
        tokenizer_path=str(tokenizer_path),
        num_frames=2,
        batch_size=2,
        **model_view_sizes(model),
    )
    dm.setup("fit")
    assert dm.train_dataset.source.name == "davis/train/anno3"
    assert len(dm.train_dataset) == 3 + 3 + 2  # anchors every 2 frames: 5 frames x 2 objects, 3 frames x 1
    assert dm.val_dataset.source.name == "davis/valid/anno3" and len(dm.val_dataset) == 3
    batch = check_first_training_batch(model, dm)
    assert batch.valid.any() and all(m.exp_id in ("3", "7") for m in batch.meta)
    item = dm.val_dataset[1]  # dv_a, object 2, whole video at the original resolution
    assert item.meta.exp_id == "7" and item.orig_masks.shape == (5, 24, 32)
    assert item.orig_masks.sum(dim=(1, 2)).tolist() == [25, 25, 25, 0, 0]


def test_davis_config_file_matches_the_datamodule() -> None:
    cfg = composed_data_config("davis")
    assert cfg["_target_"] == "data_modules.davis.RefDAVISDataModule"
    assert cfg["root"] == "${paths.data_dir}/ref-davis" and cfg["annotator"] is None
    assert cfg["val_split"] == "valid" and cfg["tokenizer_path"] == "${paths.weights_dir}/beit3.spm"


def test_davis_scoring_refuses_an_expression_of_an_object_no_annotation_has(
    root: Path, tmp_path: Path
) -> None:
    from mpgsam2.metrics.scoring import score_davis

    edit_json(_json(root), lambda d: [_exps(d)[str(i)].update(obj_id="7") for i in range(4, 8)])
    pred = tmp_path / "pred"
    for k in range(4):
        (pred / f"anno_{k}").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"Annotations/dv_a: object \[7\] of expression '4'.*none of"):
        score_davis(pred, RefDAVISSource(root, "valid"))
