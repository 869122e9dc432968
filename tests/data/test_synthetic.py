"""Tests for the synthetic referring-video dataset (generation, layout, content, tokenizer, reruns, failures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mpgsam2.data.synthetic as synthetic
from mpgsam2.data import DatasetError, RefYTVOSSource
from mpgsam2.data.synthetic import (
    COLOURS,
    DIRECTIONS,
    FORMAT_VERSION,
    SHAPES,
    SIZES,
    VOCABULARY,
    SyntheticConfig,
    generate_synthetic_ytvos,
)
from mpgsam2.text import Beit3Tokenizer

SMALL = SyntheticConfig(seed=3, num_train_videos=4, num_valid_videos=2, num_frames=6)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_ytvos(tmp_path_factory.mktemp("synthetic") / "data", SMALL)


def _expressions(root: Path, split: str) -> dict[str, dict]:
    return json.loads((root / "meta_expressions" / split / "meta_expressions.json").read_text())["videos"]


def _targets(entry: dict) -> list[dict]:
    """The expressions that refer to an object (not the no-target one)."""
    return [e for e in entry["expressions"].values() if e["obj_id"] != []]


def _masks(root: Path, split: str, vid: str, frames: list[str]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(root / split / "Annotations" / vid / f"{f}.png")) for f in frames])


def test_layout_and_json_format(dataset: Path) -> None:
    assert (dataset / "tokenizer.model").is_file()
    record = json.loads((dataset / "synthetic.json").read_text())
    assert record["format_version"] == FORMAT_VERSION
    assert record["config"] == {
        "seed": 3,
        "num_train_videos": 4,
        "num_valid_videos": 2,
        "num_frames": 6,
        "image_size": 64,
        "min_objects": 2,
        "max_objects": 3,
    }
    frames = ["00000", "00001", "00002", "00003", "00004", "00005"]
    for split, count in (("train", 4), ("valid", 2)):
        videos = _expressions(dataset, split)
        meta = json.loads((dataset / split / "meta.json").read_text())["videos"]
        assert len(videos) == count and set(meta) == set(videos)
        for vid, entry in videos.items():
            assert entry["frames"] == frames
            assert sorted(p.name for p in (dataset / split / "JPEGImages" / vid).iterdir()) == [
                f"{f}.jpg" for f in frames
            ]
            png = Image.open(dataset / split / "Annotations" / vid / "00000.png")
            assert png.mode == "P" and png.size == (64, 64)
            assert png.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]  # DAVIS palette
            with Image.open(dataset / split / "JPEGImages" / vid / "00000.jpg") as jpg:
                assert jpg.format == "JPEG" and jpg.mode == "RGB" and jpg.size == (64, 64)

            ids = _masks(dataset, split, vid, frames)
            objects = meta[vid]["objects"]
            assert 2 <= len(objects) <= 3
            assert sorted(np.unique(ids).tolist()) == [0, *range(1, len(objects) + 1)]
            for obj_id, obj in objects.items():
                assert obj["category"] in SHAPES
                assert obj["frames"] == [f for t, f in enumerate(frames) if (ids[t] == int(obj_id)).any()]
            expressions = entry["expressions"]
            assert list(expressions) == [str(i) for i in range(len(expressions))]
            # Every object is referred to, each expression by one object id of the video; the last expression,
            # and only it, is the video's no-target one (an empty list of object ids).
            assert {e["obj_id"] for e in _targets(entry)} == set(objects)
            assert [e["obj_id"] for e in expressions.values()][-1] == []
            assert len(_targets(entry)) == len(expressions) - 1
            for e in expressions.values():
                assert set(e) == {"exp", "obj_id"}


def test_every_referred_object_visible_in_first_frame_and_half_the_video(dataset: Path) -> None:
    for split in ("train", "valid"):
        for vid, entry in _expressions(dataset, split).items():
            ids = _masks(dataset, split, vid, entry["frames"])
            for e in _targets(entry):
                visible = (ids == int(e["obj_id"])).sum(axis=(1, 2))
                assert visible[0] >= 20, (vid, e)
                assert (visible > 0).sum() >= len(visible) / 2, (vid, e)


@pytest.mark.parametrize("split", ["train", "valid"])
def test_reference_reader_reads_it(dataset: Path, split: str) -> None:
    source = RefYTVOSSource(dataset, split)
    videos = _expressions(dataset, split)
    assert source.has_masks
    assert len(source.expressions) == sum(len(v["expressions"]) for v in videos.values())
    assert sum(e.no_target for e in source.expressions) == len(videos)  # one per video
    for expr in source.expressions:
        expected = videos[expr.video.video_id]["expressions"][expr.exp_id]
        assert expr.caption == expected["exp"]
        if expr.no_target:  # its target: empty on every frame
            assert expected["obj_id"] == [] and expr.obj_ids == ()
            assert not source.read_masks(expr, range(expr.video.num_frames)).any()
            continue
        assert expr.obj_ids == (int(expected["obj_id"]),)
        frames = source.read_frames(expr.video, [0, 5])
        masks = source.read_masks(expr, [0, 5])
        assert frames.shape == (2, 64, 64, 3) and frames.dtype == np.uint8
        assert masks.shape == (2, 64, 64) and masks.dtype == bool and masks[0].any()
        ids = _masks(dataset, split, expr.video.video_id, ["00000", "00005"])
        np.testing.assert_array_equal(masks, ids == expr.obj_ids[0])


def _parse(caption: str) -> dict[str, str]:
    words = caption.split()
    assert words[0] == "the"
    if len(words) == 3:
        return {"colour": words[1], "shape": words[2]}
    assert len(words) == 6 and words[4] == "moving", caption
    return {"size": words[1], "colour": words[2], "shape": words[3], "direction": words[5]}


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _whole_views(ids: np.ndarray, obj_id: int) -> list[int]:
    """Frames where the object is certainly neither clipped by the border nor occluded (objects with higher
    ids are drawn in front, so an occluded object touches one of them)."""
    return [
        t
        for t in range(len(ids))
        if (ids[t] == obj_id).any()
        and not _touches_border(ids[t] == obj_id)
        and not (_dilate(ids[t] == obj_id) & (ids[t] > obj_id)).any()
    ]


def test_expressions_describe_the_referred_object(dataset: Path) -> None:
    palette = np.array(list(COLOURS.values()), dtype=np.float64)
    checked_shape = checked_direction = 0
    for split in ("train", "valid"):
        for vid, entry in _expressions(dataset, split).items():
            frames = entry["frames"]
            ids = _masks(dataset, split, vid, frames)
            rgb = np.stack(
                [np.asarray(Image.open(dataset / split / "JPEGImages" / vid / f"{f}.jpg")) for f in frames]
            ).astype(np.float64)
            for e in _targets(entry):
                words = _parse(e["exp"])
                mask = ids == int(e["obj_id"])
                # Colour: the mean JPEG colour inside the mask (away from its edges) is the named one.
                inner = mask[0].copy()
                inner[1:-1, 1:-1] &= (
                    mask[0, :-2, 1:-1] & mask[0, 2:, 1:-1] & mask[0, 1:-1, :-2] & mask[0, 1:-1, 2:]
                )
                mean = rgb[0][inner].mean(axis=0)
                nearest = list(COLOURS)[int(np.argmin(((palette - mean) ** 2).sum(axis=1)))]
                assert nearest == words["colour"], (vid, e, mean)
                assert np.abs(mean - COLOURS[words["colour"]]).max() < 20, (vid, e, mean)

                # Shape, size and motion: from the views that show the whole object.
                whole = _whole_views(ids, int(e["obj_id"]))
                if not whole:
                    continue
                checked_shape += 1
                ys, xs = np.nonzero(mask[whole[0]])
                fill = len(ys) / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
                shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
                assert shape == words["shape"], (vid, e, fill)
                if "size" not in words:
                    continue
                assert ("big" if len(ys) > 200 else "small") == words["size"], (vid, e, len(ys))
                if len(whole) >= 2:
                    t0, t1 = whole[0], whole[-1]
                    step = (np.argwhere(mask[t1]).mean(axis=0) - np.argwhere(mask[t0]).mean(axis=0)) / (
                        t1 - t0
                    )
                    dy, dx = DIRECTIONS[words["direction"]]
                    assert step @ np.array([dy, dx]) > 0.5, (vid, e, step)  # >= 1.5 % of 64 px per frame
                    assert abs(step @ np.array([dx, dy])) < 0.5, (vid, e, step)
                    checked_direction += 1
    assert checked_shape >= 10 and checked_direction >= 5, (checked_shape, checked_direction)


def test_every_video_has_a_no_target_expression_naming_no_object_of_it(dataset: Path) -> None:
    palette = np.array(list(COLOURS.values()), dtype=np.float64)
    for split in ("train", "valid"):
        for vid, entry in _expressions(dataset, split).items():
            no_target = [e for e in entry["expressions"].values() if e["obj_id"] == []]
            assert len(no_target) == 1, vid
            words = _parse(no_target[0]["exp"])
            assert set(words) == {"size", "colour", "shape", "direction"}  # a long caption
            assert words["size"] in SIZES and words["shape"] in SHAPES and words["direction"] in DIRECTIONS
            # its colour is none of the video's objects' (each object's colour is named by its captions, checked
            # against the pixels in test_expressions_describe_the_referred_object) ...
            assert words["colour"] not in {_parse(e["exp"])["colour"] for e in _targets(entry)}, vid
            # ... and no pixel of any frame shows it (nearest palette colour, as that test reads colours)
            rgb = np.stack(
                [
                    np.asarray(Image.open(dataset / split / "JPEGImages" / vid / f"{f}.jpg"))
                    for f in entry["frames"]
                ]
            ).astype(np.float64)
            nearest = np.argmin(((rgb[..., None, :] - palette) ** 2).sum(-1), axis=-1)
            close = ((rgb - COLOURS[words["colour"]]) ** 2).sum(-1) < 40**2
            assert not (close & (nearest == list(COLOURS).index(words["colour"]))).any(), vid


def test_tokenizer_knows_every_word(dataset: Path) -> None:
    tok = Beit3Tokenizer(dataset / "tokenizer.model")
    assert tok.vocab_size == len(VOCABULARY) + 6 <= 64  # + <s> <pad> </s> <unk> <mask> [SEG]
    assert set(VOCABULARY) == {"the", "moving", *COLOURS, *SHAPES, *SIZES, *DIRECTIONS}
    ids = [tok.encode(w)[1:-1] for w in VOCABULARY]
    assert all(len(i) == 1 for i in ids)  # one piece per word
    assert len({i[0] for i in ids}) == len(VOCABULARY)  # distinct ids
    assert tok.unk_id not in {i[0] for i in ids}
    for split in ("train", "valid"):
        for entry in _expressions(dataset, split).values():
            for e in entry["expressions"].values():
                encoded = tok.encode(e["exp"])
                assert tok.unk_id not in encoded and len(encoded) == len(e["exp"].split()) + 2


def test_deterministic_in_the_seed(dataset: Path, tmp_path: Path) -> None:
    again = generate_synthetic_ytvos(tmp_path / "again", SMALL)
    other = generate_synthetic_ytvos(tmp_path / "other", SyntheticConfig(**{**vars(SMALL), "seed": 4}))
    assert (again / "tokenizer.model").read_bytes() == (dataset / "tokenizer.model").read_bytes()
    assert (other / "tokenizer.model").read_bytes() == (dataset / "tokenizer.model").read_bytes()
    differs = False
    for split in ("train", "valid"):
        assert _expressions(again, split) == _expressions(dataset, split)
        differs |= _expressions(other, split) != _expressions(dataset, split)
        for vid, entry in _expressions(dataset, split).items():
            ids = _masks(dataset, split, vid, entry["frames"])
            np.testing.assert_array_equal(_masks(again, split, vid, entry["frames"]), ids)
            differs |= not np.array_equal(_masks(other, split, vid, entry["frames"]), ids)
            jpg = f"{split}/JPEGImages/{vid}/00003.jpg"
            assert (again / jpg).read_bytes() == (dataset / jpg).read_bytes()
    assert differs


def test_more_videos_keep_the_existing_ones(dataset: Path, tmp_path: Path) -> None:
    bigger = generate_synthetic_ytvos(
        tmp_path / "d", SyntheticConfig(**{**vars(SMALL), "num_train_videos": 5})
    )
    first, more = _expressions(dataset, "train"), _expressions(bigger, "train")
    assert len(more) == 5 and {v: more[v] for v in first} == first


def test_rerun_skips_and_other_parameters_raise(tmp_path: Path) -> None:
    config = SyntheticConfig(num_train_videos=1, num_valid_videos=1, num_frames=2)
    root = generate_synthetic_ytvos(tmp_path / "data", config)
    marker = root / "train" / "JPEGImages" / "keep.txt"
    marker.write_text("not regenerated")
    assert generate_synthetic_ytvos(root, config) == root
    assert marker.read_text() == "not regenerated"

    other = SyntheticConfig(num_train_videos=2, num_valid_videos=1, num_frames=2)
    with pytest.raises(DatasetError, match=str(root)) as err:
        generate_synthetic_ytvos(root, other)
    assert "overwrite=True" in str(err.value)
    assert marker.exists()  # nothing deleted

    generate_synthetic_ytvos(root, other, overwrite=True)
    assert not marker.exists()
    assert len(_expressions(root, "train")) == 2
    assert json.loads((root / "synthetic.json").read_text())["config"]["num_train_videos"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary folder left


def test_an_older_format_with_the_same_parameters_is_regenerated(tmp_path: Path) -> None:
    config = SyntheticConfig(num_train_videos=1, num_valid_videos=1, num_frames=2)
    root = generate_synthetic_ytvos(tmp_path / "data", config)
    record = json.loads((root / "synthetic.json").read_text())
    # as a format-1 folder (before the no-target expressions) records itself
    (root / "synthetic.json").write_text(json.dumps({**record, "format_version": 1}))
    marker = root / "train" / "JPEGImages" / "keep.txt"
    marker.write_text("format 1")
    generate_synthetic_ytvos(root, config)  # no overwrite=True needed: the same parameters, an older format
    assert not marker.exists()
    assert json.loads((root / "synthetic.json").read_text())["format_version"] == FORMAT_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    # an older format with OTHER parameters is still refused without overwrite=True
    (root / "synthetic.json").write_text(json.dumps({**record, "format_version": 1, "config": {"seed": 9}}))
    with pytest.raises(DatasetError, match="overwrite=True"):
        generate_synthetic_ytvos(root, config)


def test_foreign_folder_is_never_touched(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("user data")
    config = SyntheticConfig(num_train_videos=1, num_valid_videos=1, num_frames=2)
    for overwrite in (False, True):
        with pytest.raises(DatasetError, match="not a synthetic dataset"):
            generate_synthetic_ytvos(root, config, overwrite=overwrite)
    assert [p.name for p in root.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (generate_synthetic_ytvos(empty, config) / "synthetic.json").is_file()


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = SyntheticConfig(num_train_videos=2, num_valid_videos=1, num_frames=2)
    written = []
    real_write_split = synthetic._write_split

    def write_then_fail(out: Path, *args: object) -> None:
        real_write_split(out, *args)  # type: ignore[arg-type]
        written.append(out)
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_write_split", write_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_synthetic_ytvos(tmp_path / "data", config)
    assert written and list(tmp_path.iterdir()) == []

    # An interrupted replacement keeps the previous dataset.
    monkeypatch.undo()
    root = generate_synthetic_ytvos(tmp_path / "data", config)
    before = _expressions(root, "train")
    monkeypatch.setattr(synthetic, "_train_tokenizer", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_ytvos(root, SyntheticConfig(**{**vars(config), "seed": 1}), overwrite=True)
    assert _expressions(root, "train") == before
    assert json.loads((root / "synthetic.json").read_text())["config"]["seed"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


@pytest.mark.parametrize(
    "fields",
    [
        {"seed": -1},
        {"num_frames": 1},
        {"image_size": 16},
        {"min_objects": 3, "max_objects": 2},
        {"max_objects": 6},  # one colour must be left for the no-target expression
    ],
)
def test_config_rejects_bad_values(fields: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="SyntheticConfig"):
        SyntheticConfig(**fields)


def test_config_rejects_non_integers() -> None:
    with pytest.raises(ValueError, match="num_frames"):
        SyntheticConfig(num_frames=2.5)  # type: ignore[arg-type]
    assert SyntheticConfig(seed=np.int64(2)).seed == 2
