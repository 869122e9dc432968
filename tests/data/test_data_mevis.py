"""MeViS reader and DataModule, on tiny datasets in the official layout written into tmp_path."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers.configs import composed_data_config
from helpers.datasets import (
    check_first_training_batch,
    default_mevis_videos,
    edit_json,
    expected_union_mask,
    mevis_frame_names,
    model_view_sizes,
    write_mevis_dataset,
)
from helpers.tiny import make_tiny_model
from PIL import Image
from pycocotools import mask as coco_mask

from data_modules import MeViSDataModule
from mpgsam2.data import DatasetError, MeViSSource, ReferringVideoSource
from mpgsam2.data.mevis import _decode_rle, rle_counts

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_mevis_dataset(tmp_path / "mevis", "train")


def _expressions_file(root: Path, split: str = "train") -> Path:
    return root / split / "meta_expressions.json"


def _mask_file(root: Path, split: str = "train") -> Path:
    return root / split / "mask_dict.json"


def _expr(src: MeViSSource, vid: str, exp_id: str):
    return next(e for e in src.expressions if e.video.video_id == vid and e.exp_id == exp_id)


# ------------------------------------------------------------------------------------------------ the reader


def test_mevis_records_follow_the_json(root: Path) -> None:
    src = MeViSSource(root, "train")
    spec = default_mevis_videos()
    assert isinstance(src, ReferringVideoSource)
    assert src.name == "mevis/train" and src.has_masks
    assert [v.video_id for v in src.videos] == list(spec)
    expected = [
        (vid, eid, cap, tuple(annos))
        for vid, s in spec.items()
        for eid, (cap, annos) in s["expressions"].items()
    ]
    assert [(e.video.video_id, e.exp_id, e.caption, e.obj_ids) for e in src.expressions] == expected
    assert src.videos[0].frame_names == tuple(mevis_frame_names(6))
    assert src.videos[1].frame_paths[3] == root / "train" / "JPEGImages" / "mv_b" / "00003.jpg"
    assert src.anno_keys(src.expressions[0]) == ("1", "2")


def test_mevis_union_masks_and_absent_frames(root: Path) -> None:
    src = MeViSSource(root, "train")
    spec = default_mevis_videos()
    for expr in src.expressions:
        vspec = spec[expr.video.video_id]
        n = expr.video.num_frames
        masks = src.read_masks(expr, list(range(n)))
        size = tuple(vspec.get("size", (24, 32)))
        assert masks.dtype == bool and masks.shape == (n, *size)
        for t in range(n):
            assert np.array_equal(masks[t], expected_union_mask(vspec, expr.obj_ids, t)), (expr.exp_id, t)
    both = src.read_masks(_expr(src, "mv_a", "0"), [0, 2])
    assert both.sum(axis=(1, 2)).tolist() == [25, 50]  # frame 2: the union of two disjoint 5x5 squares
    gone = src.read_masks(_expr(src, "mv_b", "0"), [1, 2, 3])  # null RLEs in frames 2 and 3
    assert gone.sum(axis=(1, 2)).tolist() == [25, 0, 0]
    frames = src.read_frames(src.videos[1], [0, 3])
    assert frames.shape == (2, 20, 28, 3) and frames.dtype == np.uint8


def test_mevis_mask_dict_is_read_lazily_once(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mpgsam2.data.mevis as mevis
    import mpgsam2.data.sources as sources

    mask_file = _mask_file(root)
    good = mask_file.read_text()
    mask_file.write_text("{not json")  # construction must not read it
    src = MeViSSource(root, "train")
    with pytest.raises(DatasetError, match="mask_dict.json.*not valid JSON"):
        src.read_masks(src.expressions[0], [0])
    mask_file.write_text(good)

    calls = []
    real = sources.load_json
    for module in (mevis, sources):  # the expressions file is read through sources.load_videos_json
        monkeypatch.setattr(module, "load_json", lambda p, w: calls.append(Path(p).name) or real(p, w))
    src = MeViSSource(root, "train")
    assert calls == ["meta_expressions.json"]
    src.read_masks(src.expressions[0], [0])
    src.read_masks(src.expressions[3], [1])
    assert calls == ["meta_expressions.json", "mask_dict.json"]
    # A loaded source pickles with its masks (spawned DataLoader workers do not re-read the file).
    mask_file.unlink()
    clone = pickle.loads(pickle.dumps(src))
    assert np.array_equal(
        clone.read_masks(clone.expressions[0], [2]), src.read_masks(src.expressions[0], [2])
    )


def test_mevis_valid_u_has_masks_valid_has_none(tmp_path: Path) -> None:
    root = write_mevis_dataset(tmp_path, "valid_u")
    write_mevis_dataset(tmp_path, "valid", masks=False)
    valid_u = MeViSSource(root, "valid_u")
    assert valid_u.name == "mevis/valid_u" and valid_u.has_masks
    assert valid_u.read_masks(_expr(valid_u, "mv_a", "0"), [2]).sum() == 50
    valid = MeViSSource(root, "valid")
    assert not valid.has_masks and not (root / "valid" / "mask_dict.json").exists()
    assert [e.obj_ids for e in valid.expressions] == [()] * 4
    with pytest.raises(DatasetError, match=r"valid/mask_dict.json: split 'valid' has no public ground truth"):
        valid.read_masks(valid.expressions[0], [0])
    with pytest.raises(ValueError, match="split must be one of"):
        MeViSSource(root, "test")


def test_mevis_valid_videos_are_sorted(tmp_path: Path) -> None:
    videos = dict(reversed(list(default_mevis_videos().items())))
    root = write_mevis_dataset(tmp_path, "valid_u", videos)
    write_mevis_dataset(tmp_path, "train", videos)
    assert [v.video_id for v in MeViSSource(root, "valid_u").videos] == ["mv_a", "mv_b"]
    assert [v.video_id for v in MeViSSource(root, "train").videos] == ["mv_b", "mv_a"]  # json order


def test_mevis_masks_index_the_json_frame_order(root: Path) -> None:
    # mask_dict lists follow the json's frames list; a reversed list reverses the frames and the masks together.
    edit_json(_expressions_file(root), lambda d: d["videos"]["mv_b"]["frames"].reverse())
    mask = _mask_file(root)
    edit_json(mask, lambda d: d["3"].reverse())
    src = MeViSSource(root, "train")
    video = src.videos[1]
    assert video.frame_names == tuple(reversed(mevis_frame_names(4)))
    assert src.read_masks(_expr(src, "mv_b", "0"), [0, 3]).sum(axis=(1, 2)).tolist() == [0, 25]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode under numpy 2
def test_rle_counts_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for trial in range(50):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if trial == 0:
            m[:] = 1
        encoded = coco_mask.encode(np.asfortranarray(m))
        counts = rle_counts(encoded["counts"])
        flat = np.repeat(np.arange(len(counts)) % 2, counts).reshape(w, h).T  # column-major runs
        assert np.array_equal(flat, m)
        assert np.array_equal(_decode_rle(encoded["counts"], h, w), coco_mask.decode(encoded).astype(bool))
    with pytest.raises(ValueError, match="cover 6 pixels, not 2x4"):
        _decode_rle(coco_mask.encode(np.zeros((2, 3), np.uint8, order="F"))["counts"], 2, 4)
    for bad in ("a b", "\u00e9", "P", "o" * 13 + "0"):  # bad characters, an unfinished or over-long number
        with pytest.raises(ValueError):
            rle_counts(bad)


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("videos"), "missing the top-level 'videos'"),
        (lambda d: d["videos"]["mv_a"].pop("frames"), "video 'mv_a': 'frames' must be a non-empty list"),
        (lambda d: d["videos"]["mv_a"].pop("expressions"), "video 'mv_a': missing 'expressions'"),
        (
            lambda d: d["videos"]["mv_a"]["expressions"]["1"].pop("exp"),
            "expression '1': missing the sentence",
        ),
        (
            lambda d: d["videos"]["mv_a"]["expressions"]["1"].pop("anno_id"),
            "expression '1': 'anno_id' must be",
        ),
        (lambda d: d["videos"]["mv_a"]["expressions"]["1"].update(anno_id=["x"]), "non-negative integers"),
        (
            lambda d: d["videos"]["mv_a"]["expressions"]["1"].update(anno_id=[1, 1]),
            "lists an annotation twice",
        ),
        (lambda d: d["videos"]["mv_a"]["frames"].append("00000"), "lists a frame twice"),
        (
            lambda d: d["videos"]["mv_a"]["frames"].append("../f"),
            "frame name '../f' contains a path separator",
        ),
        (
            lambda d: d["videos"]["mv_a"]["expressions"].update({"../e": {"exp": "x", "anno_id": [1]}}),
            "'../e'",
        ),
        (lambda d: d["videos"].update({"../x": d["videos"]["mv_a"]}), "video id '../x' contains a path sep"),
        (lambda d: d["videos"].update({"/abs": d["videos"]["mv_a"]}), "video id '/abs' contains a path sep"),
    ],
)
def test_mevis_bad_expressions_file_is_named(root: Path, edit, message: str) -> None:
    path = edit_json(_expressions_file(root), edit)
    with pytest.raises(DatasetError, match=message) as info:
        MeViSSource(root, "train")
    assert str(info.value).startswith(str(path))


def test_mevis_malformed_or_missing_files_are_named(root: Path) -> None:
    path = _expressions_file(root)
    path.write_text('{"videos": {')
    with pytest.raises(
        DatasetError, match=r"meta_expressions.json: the MeViS expressions file is not valid JSON"
    ):
        MeViSSource(root, "train")
    write_mevis_dataset(root, "train")
    _mask_file(root).unlink()
    with pytest.raises(DatasetError, match=r"train/mask_dict.json: MeViS mask file not found"):
        MeViSSource(root, "train")


def _mask_error(root: Path, exp=("mv_a", "0"), frames=(0, 1, 2)) -> str:
    src = MeViSSource(root, "train")
    with pytest.raises(DatasetError) as info:
        src.read_masks(_expr(src, *exp), list(frames))
    message = str(info.value)
    assert message.startswith(str(_mask_file(root))), message
    return message


def test_mevis_unknown_anno_id_names_mask_dict_and_expression(root: Path) -> None:
    edit_json(
        _expressions_file(root), lambda d: d["videos"]["mv_b"]["expressions"]["0"].update(anno_id=[3, 42])
    )
    message = _mask_error(root, exp=("mv_a", "1"))  # any first read validates every expression
    assert "no annotation '42'" in message and "expression '0' of video 'mv_b'" in message


def test_mevis_wrong_frame_count_is_named(root: Path) -> None:
    edit_json(_mask_file(root), lambda d: d["3"].append(None))
    assert "annotation '3' has 5 frame entries but video 'mv_b'" in _mask_error(root)


def test_mevis_rle_of_another_size_is_named(root: Path) -> None:
    edit_json(_mask_file(root), lambda d: d["2"][2].update(size=[24, 33]))
    message = _mask_error(root)
    assert "annotation '2', frame 2 (mv_a/00002): RLE size is 33x24 (WxH)" in message
    assert "00002.jpg is 32x24" in message


def test_mevis_corrupt_rle_counts_are_named(root: Path) -> None:
    good = _mask_file(root).read_text()
    edit_json(_mask_file(root), lambda d: d["1"][1].update(counts=d["1"][1]["counts"] + "9"))
    assert "annotation '1', frame 1 (mv_a/00001): corrupt RLE counts: the runs cover" in _mask_error(root)
    _mask_file(root).write_text(good)
    edit_json(_mask_file(root), lambda d: d["1"][1].update(counts="ab cd"))
    assert "corrupt RLE counts" in _mask_error(root)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not a list", "annotation '1' must be a list of per-frame RLEs"),
        ([[1, 2]] * 6, "annotation '1', frame 0: expected null or a COCO RLE object"),
        ([{"size": [24, 32], "counts": 5}] * 6, "frame 0: RLE 'counts' must be an ASCII string"),
        ([{"size": [24, 32], "counts": [700]}] * 6, "frame 0: RLE counts cover 700 pixels, not 24x32 = 768"),
    ],
)
def test_mevis_malformed_annotation_is_named(root: Path, value, message: str) -> None:
    edit_json(_mask_file(root), lambda d: d.update({"1": value}))
    assert message in _mask_error(root)


def test_mevis_uncompressed_rle_is_accepted(root: Path) -> None:
    m = np.zeros((24, 32), dtype=np.uint8)
    m[3:7, 10:12] = 1
    runs, flat, start = [], m.T.reshape(-1), 0  # column-major runs starting with background
    value = 0
    while start < flat.size:
        end = start
        while end < flat.size and flat[end] == value:
            end += 1
        runs.append(end - start)
        start, value = end, 1 - value
    edit_json(_mask_file(root), lambda d: d["1"].__setitem__(0, {"size": [24, 32], "counts": runs}))
    src = MeViSSource(root, "train")
    assert np.array_equal(src.read_masks(_expr(src, "mv_a", "1"), [0])[0], m.astype(bool))


def test_mevis_missing_or_truncated_frame_is_named(root: Path) -> None:
    src = MeViSSource(root, "train")
    expr = _expr(src, "mv_a", "0")
    missing = expr.video.frame_paths[1]
    missing.unlink()
    with pytest.raises(DatasetError, match="00001.jpg: frame image not found"):
        src.read_frames(expr.video, [0, 1])
    with pytest.raises(DatasetError, match="00001.jpg: image file not found"):
        src.read_masks(expr, [1])
    truncated = expr.video.frame_paths[2]
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DatasetError, match="00002.jpg: cannot decode the frame image"):
        src.read_frames(expr.video, [2])


# ------------------------------------------------------------------------------------------------ DataModule


def test_mevis_datamodule_trains_one_step(root: Path, tokenizer_path: Path) -> None:
    write_mevis_dataset(root, "valid_u")
    model = make_tiny_model(freeze_image_encoder=False)
    dm = MeViSDataModule(
        root=str(root),
        tokenizer_path=str(tokenizer_path),
        num_frames=2,
        batch_size=2,
        **model_view_sizes(model),
    )
    dm.setup("fit")
    assert dm.train_dataset.source.name == "mevis/train" and dm.train_dataset.source._masks is not None
    assert len(dm.train_dataset) == 3 * 3 + 2  # anchors every 2 frames: 6-frame video x 3 exps, 4-frame x 1
    assert dm.val_dataset.source.name == "mevis/valid_u"
    assert dm.tokenizer_vocab_size <= int(model.config.beit3["vocab_size"])
    batch = check_first_training_batch(model, dm)
    assert batch.text_ids.shape[0] == 2 and batch.valid.any()

    item = dm.val_dataset[0]  # whole video with the original-resolution union target
    assert item.meta.video == "mv_a" and item.orig_masks.shape == (6, 24, 32)
    assert item.orig_masks[2].sum() == 50


def test_mevis_datamodule_valid_split_and_config(tmp_path: Path, tokenizer_path: Path) -> None:

    root = write_mevis_dataset(tmp_path, "valid", masks=False)
    dm = MeViSDataModule(root=str(root), val_split="valid", tokenizer_path=str(tokenizer_path), sam_size=32)
    dm.setup("validate")
    item = dm.val_dataset[3]
    assert item.meta.video == "mv_b" and item.orig_masks is None and not item.valid.any()
    cfg = composed_data_config("mevis")
    assert cfg["_target_"] == "data_modules.mevis.MeViSDataModule" and cfg["num_frames"] == 8
    assert cfg["root"] == "${paths.data_dir}/mevis" and cfg["val_split"] == "valid_u"
    assert cfg["tokenizer_path"] == "${paths.weights_dir}/beit3.spm"
    assert Image.open(dm.val_dataset.source.videos[0].frame_paths[0]).size == (32, 24)
