"""Ref-YouTube-VOS reader, records and file readers, on tiny datasets written into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.datasets import default_ytvos_videos, expected_mask, frame_names, write_ytvos_dataset
from PIL import Image

from mpgsam2.data import (
    DatasetError,
    ExpressionRecord,
    ReferringVideoSource,
    RefYTVOSSource,
    VideoRecord,
    load_json,
    read_palette_mask,
    read_rgb_frames,
    swap_captions_within_video,
    validate_video_id,
)


@pytest.fixture
def train_root(tmp_path: Path) -> Path:
    return write_ytvos_dataset(tmp_path / "ytvos", "train")


def _json_path(root: Path, split: str = "train") -> Path:
    return root / "meta_expressions" / split / "meta_expressions.json"


def _edit_json(root: Path, edit, split: str = "train") -> Path:
    path = _json_path(root, split)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------------------------------------ the reader


def test_ytvos_train_records_follow_the_json(train_root: Path) -> None:
    src = RefYTVOSSource(train_root, "train")
    spec = default_ytvos_videos()
    assert isinstance(src, ReferringVideoSource)
    assert src.name == "ytvos/train" and src.has_masks
    assert [v.video_id for v in src.videos] == list(spec)
    expected = [
        (vid, eid, cap, (obj,)) for vid, s in spec.items() for eid, (cap, obj) in s["expressions"].items()
    ]
    got = [(e.video.video_id, e.exp_id, e.caption, e.obj_ids) for e in src.expressions]
    assert got == expected  # captions raw: capitals and the tab are kept
    vid_a = src.videos[0]
    assert vid_a.frame_names == tuple(frame_names(6))
    assert vid_a.frame_paths[2] == train_root / "train" / "JPEGImages" / "vid_a" / "00010.jpg"
    # Expressions of a video share one VideoRecord.
    assert src.expressions[0].video is src.expressions[1].video


def test_ytvos_frames_are_sorted_as_the_original(train_root: Path) -> None:
    _edit_json(train_root, lambda d: d["videos"]["vid_a"]["frames"].reverse())
    src = RefYTVOSSource(train_root)
    assert src.videos[0].frame_names == tuple(frame_names(6))


def test_ytvos_reads_frames_and_masks(train_root: Path) -> None:
    src = RefYTVOSSource(train_root)
    spec = default_ytvos_videos()["vid_a"]
    blue = next(e for e in src.expressions if e.video.video_id == "vid_a" and e.obj_ids == (2,))
    frames = src.read_frames(blue.video, [0, 3, 5])
    assert frames.shape == (3, 24, 32, 3) and frames.dtype == np.uint8
    with Image.open(blue.video.frame_paths[3]) as img:
        assert np.array_equal(frames[1], np.asarray(img.convert("RGB")))
    masks = src.read_masks(blue, [0, 1, 2, 3, 4, 5])
    assert masks.dtype == bool and masks.shape == (6, 24, 32)
    for t in range(6):
        assert np.array_equal(masks[t], expected_mask(spec, 2, t))
    # Object 2 is absent from frames 0, 1 and 5; the read still works (the object exists elsewhere).
    assert masks.any((1, 2)).tolist() == [False, False, True, True, True, False]
    assert not src.read_masks(blue, [0, 5]).any()


def test_ytvos_construction_reads_only_the_json(train_root: Path) -> None:
    import shutil

    shutil.rmtree(train_root / "train")  # no frame, no annotation folder
    src = RefYTVOSSource(train_root)
    assert len(src.expressions) == 6 and not src.has_masks
    with pytest.raises(DatasetError, match="00000.jpg"):
        src.read_frames(src.videos[0], [0])


def test_ytvos_valid_minus_test_without_masks(tmp_path: Path) -> None:
    videos = default_ytvos_videos()
    videos = {"vid_z": videos["vid_b"], "vid_b": videos["vid_b"], "vid_a": videos["vid_a"]}
    root = write_ytvos_dataset(
        tmp_path, "valid", videos, annotations=False, obj_ids_in_json=False, test_videos=["vid_b"]
    )
    src = RefYTVOSSource(root, "valid")
    assert src.name == "ytvos/valid"
    assert [v.video_id for v in src.videos] == ["vid_a", "vid_z"]  # test video removed, sorted (parity)
    assert all(e.obj_ids == () for e in src.expressions)
    assert not src.has_masks
    with pytest.raises(DatasetError, match="Annotations"):
        src.read_masks(src.expressions[0], [0])
    frames = src.read_frames(src.videos[0], range(6))
    assert frames.shape == (6, 24, 32, 3)
    keep_all = RefYTVOSSource(root, "valid", exclude_test=False)
    assert [v.video_id for v in keep_all.videos] == ["vid_a", "vid_b", "vid_z"]


def test_ytvos_valid_without_test_file_and_with_annotations(tmp_path: Path) -> None:
    root = write_ytvos_dataset(tmp_path, "valid")  # our synthetic valid ships masks and obj ids
    src = RefYTVOSSource(root, "valid")
    assert len(src.videos) == 3 and src.has_masks
    assert src.read_masks(src.expressions[0], [0]).any()


def test_ytvos_rejects_unknown_split(train_root: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        RefYTVOSSource(train_root, "test")


# ------------------------------------------------------------------------------------ bad input names the file


def test_missing_frame_names_the_file(train_root: Path) -> None:
    missing = train_root / "train" / "JPEGImages" / "vid_a" / "00010.jpg"
    missing.unlink()
    src = RefYTVOSSource(train_root)
    with pytest.raises(DatasetError, match="vid_a/00010.jpg") as err:
        src.read_frames(src.videos[0], [0, 2])
    assert str(err.value).startswith(str(missing)) and "not found" in str(err.value)


def test_truncated_jpeg_names_the_file(train_root: Path) -> None:
    path = train_root / "train" / "JPEGImages" / "vid_b" / "00005.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    src = RefYTVOSSource(train_root)
    with pytest.raises(DatasetError, match="truncated") as err:
        src.read_frames(src.videos[1], [0, 1])
    assert str(err.value).startswith(str(path))


def test_garbage_jpeg_names_the_file(train_root: Path) -> None:
    path = train_root / "train" / "JPEGImages" / "vid_b" / "00005.jpg"
    path.write_bytes(b"this is not a jpeg")
    with pytest.raises(DatasetError) as err:
        read_rgb_frames([path])
    assert str(err.value).startswith(str(path))


def test_frame_of_another_size_names_the_file(train_root: Path) -> None:
    path = train_root / "train" / "JPEGImages" / "vid_b" / "00010.jpg"
    Image.new("RGB", (30, 24)).save(path)
    src = RefYTVOSSource(train_root)
    with pytest.raises(DatasetError, match="one size") as err:
        src.read_frames(src.videos[1], [0, 1, 2])
    assert str(err.value).startswith(str(path))


def test_rgb_annotation_names_the_file(train_root: Path) -> None:
    path = train_root / "train" / "Annotations" / "vid_b" / "00005.png"
    with Image.open(path) as img:
        img.convert("RGB").save(path)
    src = RefYTVOSSource(train_root)
    with pytest.raises(DatasetError, match="palette") as err:
        src.read_masks(src.expressions[2], [0, 1])
    assert str(err.value).startswith(str(path))


def test_wrong_size_annotation_names_the_file(train_root: Path) -> None:
    path = train_root / "train" / "Annotations" / "vid_b" / "00000.png"
    small = Image.new("P", (16, 12))
    small.save(path)
    src = RefYTVOSSource(train_root)
    with pytest.raises(DatasetError, match="its frame is 32x24") as err:
        src.read_masks(src.expressions[2], [0])
    assert str(err.value).startswith(str(path))


def test_missing_annotation_names_the_file(train_root: Path) -> None:
    path = train_root / "train" / "Annotations" / "vid_b" / "00015.png"
    path.unlink()
    src = RefYTVOSSource(train_root)
    with pytest.raises(DatasetError, match="not found") as err:
        src.read_masks(src.expressions[2], [3])
    assert str(err.value).startswith(str(path))


def test_object_in_no_annotation_names_the_video_folder(train_root: Path) -> None:
    _edit_json(train_root, lambda d: d["videos"]["vid_b"]["expressions"]["0"].update(obj_id="7"))
    src = RefYTVOSSource(train_root)
    expr = src.expressions[2]
    with pytest.raises(DatasetError, match=r"object id\(s\) \[7\]") as err:
        src.read_masks(expr, [0])
    assert str(err.value).startswith(str(train_root / "train" / "Annotations" / "vid_b"))
    assert "'0'" in str(err.value) and "vid_b" in str(err.value)


def test_single_channel_annotation_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    ids = np.zeros((4, 5), dtype=np.uint8)
    ids[1, 2] = 3
    Image.fromarray(ids).save(path)  # mode "L"
    assert np.array_equal(read_palette_mask(path, (4, 5)), ids)


def _delete(*keys):
    def edit(d):
        target = d
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]

    return edit


def _set(value, *keys):
    def edit(d):
        target = d
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value

    return edit


def _rename_video(new_id):
    def edit(d):
        d["videos"][new_id] = d["videos"].pop("vid_b")

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_delete("videos"), "'videos'"),
        (_set([], "videos"), "'videos'"),
        (_delete("videos", "vid_b", "frames"), "vid_b.*'frames'"),
        (_set([], "videos", "vid_b", "frames"), "vid_b.*'frames'"),
        (_set(["00000", "00000"], "videos", "vid_b", "frames"), "vid_b.*twice"),
        (_set(["../00000"], "videos", "vid_b", "frames"), "frame name '../00000'"),
        (_delete("videos", "vid_b", "expressions"), "vid_b.*'expressions'"),
        (_delete("videos", "vid_b", "expressions", "0", "exp"), "vid_b.*expression '0'.*'exp'"),
        (_set(7, "videos", "vid_b", "expressions", "0", "exp"), "vid_b.*expression '0'.*'exp'"),
        (_delete("videos", "vid_b", "expressions", "0", "obj_id"), "vid_b.*expression '0'.*'obj_id'"),
        (_set("one", "videos", "vid_b", "expressions", "0", "obj_id"), "vid_b.*'obj_id'.*'one'"),
        (_set("-1", "videos", "vid_b", "expressions", "0", "obj_id"), "vid_b.*'obj_id'"),
        (_set("0", "videos", "vid_b", "expressions", "0", "obj_id"), "vid_b.*'obj_id' 0"),
        (_set("x", "videos", "vid_b"), "vid_b.*expected an object"),
        (_rename_video("../x"), "video id '../x'"),
        (_rename_video("/abs"), "video id '/abs'"),
        (_rename_video(".."), "video id '..'"),
        (_rename_video(""), "video id ''"),
        (_rename_video("a\\b"), "video id"),
        (_rename_video("a\x00b"), "video id"),
    ],
)
def test_malformed_json_names_the_file(train_root: Path, edit, message: str) -> None:
    path = _edit_json(train_root, edit)
    with pytest.raises(DatasetError, match=message) as err:
        RefYTVOSSource(train_root)
    assert str(err.value).startswith(str(path))


def test_invalid_json_names_the_file_and_position(train_root: Path) -> None:
    path = _json_path(train_root)
    path.write_text('{"videos": {"vid_a": ')
    with pytest.raises(DatasetError, match="not valid JSON.*line 1") as err:
        RefYTVOSSource(train_root)
    assert str(err.value).startswith(str(path))


def test_missing_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found") as err:
        RefYTVOSSource(tmp_path / "nowhere")
    assert str(err.value).startswith(str(_json_path(tmp_path / "nowhere")))


def test_malformed_test_json_names_it(tmp_path: Path) -> None:
    root = write_ytvos_dataset(
        tmp_path, "valid", annotations=False, obj_ids_in_json=False, test_videos=["vid_b"]
    )
    test_json = root / "meta_expressions" / "test" / "meta_expressions.json"
    test_json.write_text("[1, 2]")
    with pytest.raises(DatasetError, match="JSON object") as err:
        RefYTVOSSource(root, "valid")
    assert str(err.value).startswith(str(test_json))


def test_load_json_requires_an_object(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}')
    assert load_json(path, "thing") == {"a": 1}


# ----------------------------------------------------------------------------------------------- records


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "/abs", "a\\b", "C:\\x", "C:x", "x\x00", 3])
def test_validate_video_id_rejects_unsafe_ids(bad: object) -> None:
    with pytest.raises(DatasetError) as err:
        validate_video_id(bad, "meta.json")
    assert str(err.value).startswith("meta.json: video id")


@pytest.mark.parametrize("good", ["0a1b2c3d4e", "vid_01", "a.b", "..a", "with space"])
def test_validate_video_id_accepts_plain_names(good: str) -> None:
    assert validate_video_id(good, "meta.json") == good


def test_records_validate_their_ids() -> None:
    with pytest.raises(DatasetError):
        VideoRecord("../escape", ("00000",), (Path("x.jpg"),))
    with pytest.raises(ValueError, match="2 frame names but 1 paths"):
        VideoRecord("ok", ("a", "b"), (Path("a.jpg"),))
    with pytest.raises(DatasetError, match="frame name '../a'"):
        VideoRecord("ok", ("../a",), (Path("a.jpg"),))
    video = VideoRecord("ok", ("a",), (Path("a.jpg"),))
    with pytest.raises(DatasetError, match="expression id '..'"):
        ExpressionRecord(video, "..", "caption", (1,))


def test_swap_captions_within_video(train_root: Path) -> None:
    src = RefYTVOSSource(train_root)
    swapped = swap_captions_within_video(src.expressions, seed=0)
    # vid_b has a single object: its expression is dropped; every other expression has a partner.
    assert [(e.video.video_id, e.exp_id) for e in swapped] == [
        (e.video.video_id, e.exp_id) for e in src.expressions if e.video.video_id != "vid_b"
    ]
    originals = {(e.video.video_id, e.exp_id): e for e in src.expressions}
    for new in swapped:
        old = originals[(new.video.video_id, new.exp_id)]
        assert new.obj_ids == old.obj_ids and new.video is old.video
        donors = [
            e for e in src.expressions if e.video.video_id == new.video.video_id and e.obj_ids != new.obj_ids
        ]
        assert new.caption in {d.caption for d in donors}
    # vid_c's object-3 expression takes one of the two object-1 captions; deterministic in the seed.
    assert swap_captions_within_video(src.expressions, seed=0) == swapped
    picks = {
        next(e.caption for e in swap_captions_within_video(src.expressions, seed=s) if e.obj_ids == (3,))
        for s in range(20)
    }
    assert picks == {"the red square", "the upper square"}
    # Splits without object ids cannot be swapped.
    no_ids = [ExpressionRecord(e.video, e.exp_id, e.caption, ()) for e in src.expressions]
    assert swap_captions_within_video(no_ids) == []


def _add_no_target(root: Path, split: str = "train") -> None:
    """vid_a gets expression "2": a caption with ``"obj_id": []`` (refers to nothing, as the synthetic demo's)."""
    _edit_json(
        root,
        lambda d: d["videos"]["vid_a"]["expressions"].update(
            {"2": {"exp": "the purple circle", "obj_id": []}}
        ),
        split,
    )


def test_ytvos_empty_obj_id_list_is_a_no_target_expression(train_root: Path) -> None:
    _add_no_target(train_root)
    src = RefYTVOSSource(train_root)
    assert src.has_masks  # the no-target expression's empty list counts as ground truth
    no_target = [e for e in src.expressions if e.no_target]
    assert [(e.video.video_id, e.exp_id, e.caption, e.obj_ids) for e in no_target] == [
        ("vid_a", "2", "the purple circle", ())
    ]
    assert not any(e.no_target for e in src.expressions if e is not no_target[0])
    masks = src.read_masks(no_target[0], range(6))  # no "object in no annotation" error: empty on every frame
    assert masks.shape == (6, 24, 32) and not masks.any()
    # a list naming objects is not the release's format: refused, naming the file
    _edit_json(train_root, lambda d: d["videos"]["vid_a"]["expressions"]["2"].update({"obj_id": [1]}))
    with pytest.raises(DatasetError, match="meta_expressions.json.*obj_id"):
        RefYTVOSSource(train_root)


def test_swap_captions_never_involves_no_target_expressions(train_root: Path) -> None:
    _add_no_target(train_root)
    src = RefYTVOSSource(train_root)
    for seed in range(20):
        swapped = swap_captions_within_video(src.expressions, seed=seed)
        # the no-target expression is dropped (no object of its own) and its caption is given to nobody
        assert [(e.video.video_id, e.exp_id) for e in swapped] == [
            (e.video.video_id, e.exp_id)
            for e in src.expressions
            if e.video.video_id != "vid_b" and not e.no_target
        ]
        assert "the purple circle" not in {e.caption for e in swapped}


def test_a_split_with_no_target_expressions_is_scored_with_n_acc_t_acc_and_final(
    train_root: Path, tmp_path: Path
) -> None:
    from mpgsam2.metrics.scoring import score_predictions

    _add_no_target(train_root)
    src = RefYTVOSSource(train_root)
    pred = tmp_path / "pred"
    for e in src.expressions:
        folder = pred / e.video.video_id / e.exp_id
        folder.mkdir(parents=True)
        truth = src.read_masks(e, range(e.video.num_frames))
        for t, name in enumerate(e.video.frame_names):
            # exact masks, except the no-target expression: predicted as vid_a's object 1 (a false positive)
            mask = src.read_masks(src.expressions[0], [t])[0] if e.no_target else truth[t]
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{name}.png")
    scores = score_predictions(pred, src, "ytvos")  # the ytvos row has no no-target scores; the split does
    assert scores["num_no_target"] == 1 and scores["num_target"] == len(src.expressions) - 1
    assert scores["n_acc"] == 0.0 and scores["t_acc"] == 1.0 and scores["jf_target"] == 1.0
    # the no-target expression scores 0 on every frame (object 1 is in every frame of vid_a)
    assert scores["jf"] == pytest.approx((len(src.expressions) - 1) / len(src.expressions))
    assert scores["final"] == pytest.approx((scores["jf"] + 0.0 + 1.0) / 3)
    # without no-target expressions the same split is scored with J, F and J&F only, as before
    plain = score_predictions(pred, RefYTVOSSource(write_ytvos_dataset(tmp_path / "plain", "train")), "ytvos")
    assert set(plain) == {"j", "f", "jf", "num_expressions"}
