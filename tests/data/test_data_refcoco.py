"""RefCOCO / RefCOCO+ / RefCOCOg: reader, image datasets, DataModule and a training step through the image path,
on a tiny dataset in ReferFormer's converted layout written into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.configs import composed_data_config
from helpers.datasets import (
    REFCOCO_IMAGES,
    REFCOCO_OBJECTS,
    default_refcoco_samples,
    expected_refcoco_mask,
    write_refcoco_dataset,
)
from PIL import Image

from data_modules import RefCOCODataModule
from mpgsam2.data import (
    ClipTransform,
    DatasetError,
    RefCOCOSource,
    ReferringImageCollate,
    ReferringImageDataset,
    ReferringImageEvalDataset,
    decode_segmentation,
)
from mpgsam2.data.transforms import resize_masks, to_normalized_view
from mpgsam2.text.tokenizer import Beit3Tokenizer

# pycocotools' own numpy-2 deprecation notice (its C extension's __array__), not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

NAMES = ("refcoco", "refcoco+", "refcocog")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
S, HB = 64, 32  # view sizes of the tests


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    for name in NAMES:
        write_refcoco_dataset(root, name, "train")
        write_refcoco_dataset(root, name, "val")
    return root


def _json(root: Path, name: str = "refcoco", split: str = "train") -> Path:
    return root / name / f"instances_{name}_{split}.json"


def _edit(root: Path, edit, name: str = "refcoco", split: str = "train") -> Path:
    path = _json(root, name, split)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def _train_transform(hflip_p: float) -> ClipTransform:
    return ClipTransform(S, HB, train=True, hflip_p=hflip_p, photometric=False)


# ------------------------------------------------------------------------------------------------ the reader


def test_reader_follows_the_converted_json(coco_root: Path) -> None:
    src = RefCOCOSource(coco_root, "refcoco", "train")
    spec = default_refcoco_samples("refcoco", "train")
    assert len(src) == len(spec) and src.name == "refcoco/train" and src.split_by == "unc"
    assert src.annotation_file == coco_root / "refcoco" / "instances_refcoco_train.json"
    for k, (ann_id, sentence) in enumerate(spec):
        s = src.sample(k)
        file_name = REFCOCO_OBJECTS[ann_id][0]
        image_id, (h, w) = REFCOCO_IMAGES[file_name]
        assert (s.sample_id, s.image_id, s.ann_ids, s.file_name) == (k + 1, image_id, (ann_id,), file_name)
        assert (s.height, s.width) == (h, w)
        assert s.caption == sentence  # raw: capitals and double spaces kept
        assert src.image_path(s) == coco_root / "train2014" / file_name
    assert RefCOCOSource(coco_root, "refcocog", "val").split_by == "umd"
    with pytest.raises(IndexError):
        src.sample(len(src))


@pytest.mark.parametrize("name", NAMES)
def test_masks_are_exact_for_polygons_rle_and_uncompressed_rle(coco_root: Path, name: str) -> None:
    src = RefCOCOSource(coco_root, name, "train")
    for k in range(len(src)):
        s = src.sample(k)
        mask = src.read_mask(s)
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, expected_refcoco_mask(s.ann_ids[0]))
        image = src.read_image(s)
        assert image.shape == (s.height, s.width, 3) and image.dtype == np.uint8
    encodings = {REFCOCO_OBJECTS[src.sample(k).ann_ids[0]][2] for k in range(len(src))}
    if name == "refcoco":
        assert encodings == {"polygon", "rle", "uncompressed_rle"}


def test_root_may_be_the_folder_holding_coco(coco_root: Path) -> None:
    src = RefCOCOSource(coco_root.parent, "refcoco+", "val")
    assert src.root == coco_root and len(src) == 3


def test_unknown_name_or_split_is_rejected(coco_root: Path) -> None:
    with pytest.raises(ValueError, match="refcocog"):
        RefCOCOSource(coco_root, "refclef", "train")
    with pytest.raises(ValueError, match="testA"):
        RefCOCOSource(coco_root, "refcocog", "testA")  # refcocog (umd) has val/test only


def test_decode_segmentation_unions_polygons_and_skips_degenerate_ones() -> None:
    polys = [[1, 1, 4, 1, 4, 3, 1, 3], [5, 0, 7, 0, 7, 2, 5, 2], [0, 0, 2, 2]]
    mask = decode_segmentation(polys, 4, 8, "x")
    expected = np.zeros((4, 8), dtype=bool)
    expected[1:3, 1:4] = True
    expected[0:2, 5:7] = True
    np.testing.assert_array_equal(mask, expected)
    assert not decode_segmentation([[0, 0, 3, 3]], 4, 8, "x").any()


# ------------------------------------------------------------------------------------------------ bad input


def _remove_images(data: dict) -> None:
    del data["images"]


def _unknown_image(data: dict) -> None:
    data["annotations"][1]["image_id"] = 999


def _rle_wrong_size(data: dict) -> None:
    data["annotations"][2]["segmentation"]["size"] = [7, 9]  # sample 3 is ann 1102 (compressed RLE)


def _no_caption(data: dict) -> None:
    del data["images"][0]["caption"]


def _duplicate_id(data: dict) -> None:
    data["images"][1]["id"] = 1


def _escaping_file_name(data: dict) -> None:
    data["images"][0]["file_name"] = "../secret.jpg"


def _image_without_annotation(data: dict) -> None:
    data["annotations"] = data["annotations"][1:]


def _segmentation_not_a_shape(data: dict) -> None:
    data["annotations"][0]["segmentation"] = 5


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_remove_images, "'images'"),
        (_unknown_image, "image id 999"),
        (_rle_wrong_size, "RLE size"),
        (_no_caption, "caption"),
        (_duplicate_id, "twice"),
        (_escaping_file_name, "path separator"),
        (_image_without_annotation, "has no annotation"),
        (_segmentation_not_a_shape, "segmentation"),
    ],
)
def test_a_bad_json_names_the_file_at_construction(coco_root: Path, edit, message: str) -> None:
    path = _edit(coco_root, edit)
    with pytest.raises(DatasetError, match=message) as err:
        RefCOCOSource(coco_root, "refcoco", "train")
    assert str(err.value).startswith(str(path))


def test_missing_and_malformed_json_name_the_file(coco_root: Path) -> None:
    with pytest.raises(DatasetError, match="not found") as err:
        RefCOCOSource(coco_root, "refcoco", "testB")
    assert str(_json(coco_root, "refcoco", "testB")) in str(err.value)
    path = _json(coco_root)
    path.write_text(path.read_text()[:-40])  # truncated
    with pytest.raises(DatasetError, match="not valid JSON") as err:
        RefCOCOSource(coco_root, "refcoco", "train")
    assert str(err.value).startswith(str(path))


def _bad_uncompressed_counts(data: dict) -> None:
    data["annotations"][4]["segmentation"]["counts"][-1] += 3  # sample 5 is ann 2202 (uncompressed RLE)


def _corrupt_compressed_counts(data: dict) -> None:
    data["annotations"][2]["segmentation"]["counts"] = "}}}}"


def _short_compressed_counts(data: dict) -> None:
    data["annotations"][2]["segmentation"]["counts"] = "52"  # valid runs 5, 2: 7 of the image's pixels


def _cut_compressed_counts(data: dict) -> None:
    data["annotations"][2]["segmentation"]["counts"] = "5P"  # "P" asks for a further group that never comes


def _odd_polygon(data: dict) -> None:
    data["annotations"][0]["segmentation"][0] = [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize(
    ("edit", "index", "message"),
    [
        (_bad_uncompressed_counts, 4, "add up to"),
        (_corrupt_compressed_counts, 2, "cannot decode the compressed RLE: character '}'"),
        (_short_compressed_counts, 2, "cannot decode the compressed RLE: its runs cover 7 pixels"),
        (_cut_compressed_counts, 2, "cannot decode the compressed RLE: the string ends inside a run length"),
        (_odd_polygon, 0, "odd number"),
    ],
)
def test_a_bad_segmentation_names_the_file_when_read(coco_root: Path, edit, index: int, message: str) -> None:
    path = _edit(coco_root, edit)
    src = RefCOCOSource(coco_root, "refcoco", "train")
    with pytest.raises(DatasetError, match=message) as err:
        src.read_mask(src.sample(index))
    assert str(err.value).startswith(str(path)) and "annotation" in str(err.value)


def test_missing_truncated_or_resized_image_names_the_file(coco_root: Path) -> None:
    src = RefCOCOSource(coco_root, "refcoco", "train")
    sample = src.sample(0)
    path = src.image_path(sample)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError) as err:
        src.read_image(sample)
    assert str(err.value).startswith(str(path))
    Image.new("RGB", (10, 10)).save(path)
    with pytest.raises(DatasetError, match="10x10") as err:
        src.read_image(sample)
    assert str(err.value).startswith(str(path))
    path.unlink()
    with pytest.raises(DatasetError, match="not found") as err:
        src.read_image(sample)
    assert str(err.value).startswith(str(path))


# ------------------------------------------------------------------------------------------------ datasets


def test_training_set_concatenates_the_three_sources(coco_root: Path) -> None:
    sources = [RefCOCOSource(coco_root, n, "train") for n in NAMES]
    ds = ReferringImageDataset(sources, _train_transform(0.5), seed=3)
    lengths = [len(default_refcoco_samples(n, "train")) for n in NAMES]
    assert [len(s) for s in sources] == lengths and len(ds) == sum(lengths) == 10
    for i in range(len(ds)):
        src, sample = ds.locate(i)
        k = int(np.searchsorted(np.cumsum(lengths), i, side="right"))
        assert src is sources[k]
        assert sample.sample_id == i - sum(lengths[:k]) + 1
    item = ds[len(ds) - 1]  # the last refcocog sample
    assert item.meta.image.dataset == "refcocog" and item.meta.image.sample_id == 2
    assert item.sam_frames.shape == (1, 3, S, S) and item.beit_frames.shape == (1, 3, HB, HB)
    assert item.masks.shape == (1, S, S) and item.valid.tolist() == [True]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_training_item_is_exact_without_flip(coco_root: Path) -> None:
    src = RefCOCOSource(coco_root, "refcoco", "train")
    item = ReferringImageDataset([src], _train_transform(0.0))[1]
    sample = src.sample(1)
    image = src.read_image(sample)[None]
    # no photometric distortion: exactly the evaluation views of the image
    torch.testing.assert_close(item.sam_frames, to_normalized_view(image, S), rtol=0, atol=0)
    torch.testing.assert_close(item.beit_frames, to_normalized_view(image, HB), rtol=0, atol=0)
    expected = resize_masks(expected_refcoco_mask(1101)[None], S)
    torch.testing.assert_close(item.masks, expected, rtol=0, atol=0)
    assert item.caption == "left box"  # lower-cased, whitespace-normalised
    meta = item.meta
    assert (meta.image.image_id, meta.image.ann_id, meta.orig_size) == (11, 1101, (20, 28))
    assert meta.frame_names == ["COCO_train2014_000000000011"] and meta.exp_id == "2"


def test_flip_is_consistent_on_both_views_mask_and_caption(coco_root: Path) -> None:
    src = RefCOCOSource(coco_root, "refcoco", "train")
    plain = ReferringImageDataset([src], _train_transform(0.0))
    flipped = ReferringImageDataset([src], _train_transform(1.0))
    for i, caption in [
        (0, "the box on the right"),
        (2, "the box on the left"),
        (4, "bright box on the leftmost side"),  # whole words only: "bright" stays
    ]:
        a, b = plain[i], flipped[i]
        assert b.caption == caption
        # PIL's bilinear filter is mirror-symmetric: the flipped image's views are the mirrored views (to rounding)
        for key in ("sam_frames", "beit_frames"):
            torch.testing.assert_close(getattr(b, key), getattr(a, key).flip(-1), rtol=0, atol=0.03)
        ann_id = src.sample(i).ann_ids[0]
        expected = resize_masks(expected_refcoco_mask(ann_id)[None, :, ::-1].copy(), S)
        torch.testing.assert_close(b.masks, expected, rtol=0, atol=0)


def test_items_are_deterministic_per_seed_epoch_and_index(coco_root: Path) -> None:
    sources = [RefCOCOSource(coco_root, n, "train") for n in NAMES]
    ds = ReferringImageDataset(sources, _train_transform(0.5), seed=7)
    again = ReferringImageDataset(sources, _train_transform(0.5), seed=7)
    flips = {}
    for epoch in range(4):
        ds.set_epoch(epoch)
        again.set_epoch(epoch)
        for i in reversed(range(len(ds))):  # order of requests does not matter
            a, b = ds[i], again[i]
            assert a.caption == b.caption
            torch.testing.assert_close(a.sam_frames, b.sam_frames, rtol=0, atol=0)
        flips[epoch] = [ds[0].caption for _ in range(2)]
        assert flips[epoch][0] == flips[epoch][1]
    # item 0 ("the box on the left") is flipped in some epochs and not in others
    assert {f[0] for f in flips.values()} == {"the box on the left", "the box on the right"}


def test_an_empty_target_is_resampled(coco_root: Path) -> None:
    def empty_first(data: dict) -> None:
        data["annotations"][0]["segmentation"] = [[0, 0, 5, 5]]  # degenerate: covers nothing

    _edit(coco_root, empty_first)
    src = RefCOCOSource(coco_root, "refcoco", "train")
    assert not src.read_mask(src.sample(0)).any()
    ds = ReferringImageDataset([src], _train_transform(0.5), seed=1)
    item = ds[0]
    assert item.valid.tolist() == [True] and item.meta.image.sample_id != 1


def test_eval_items_keep_the_raw_caption_and_the_original_mask(coco_root: Path) -> None:
    src = RefCOCOSource(coco_root, "refcoco", "val")
    ds = ReferringImageEvalDataset(src, ClipTransform(S, HB, train=False))
    assert len(ds) == 3
    item = ds[0]
    assert item.caption == "The Right one"  # raw at inference (parity)
    assert item.orig_masks.shape == (1, 20, 28) and item.orig_masks.dtype == torch.bool
    np.testing.assert_array_equal(item.orig_masks[0].numpy(), expected_refcoco_mask(1102))
    assert item.sam_frames.shape == (1, 3, S, S) and item.valid.tolist() == [True]
    with pytest.raises(ValueError, match="train=False"):
        ReferringImageEvalDataset(src, _train_transform(0.5))


def test_swapped_captions_come_from_another_object_of_the_same_image(coco_root: Path) -> None:
    src = RefCOCOSource(coco_root, "refcoco", "val")
    ds = ReferringImageEvalDataset(src, ClipTransform(S, HB, train=False), swap_captions=True)
    # image 11 has two objects (1102, 1101); image 33 has one, so its sample is dropped
    assert len(ds) == 2
    assert [(it.meta.image.ann_id, it.caption) for it in (ds[0], ds[1])] == [
        (1102, "left  one"),
        (1101, "The Right one"),
    ]


# ------------------------------------------------------------------------------------------------ DataModule


def _datamodule(coco_root: Path, tokenizer_path: Path, **kwargs) -> RefCOCODataModule:
    return RefCOCODataModule(
        root=str(coco_root),
        tokenizer_path=str(tokenizer_path),
        sam_size=S,
        beit_size=HB,
        batch_size=4,
        seed=0,
        **kwargs,
    )


def test_datamodule_yields_image_batches(coco_root: Path, tokenizer_path: Path) -> None:
    dm = _datamodule(coco_root, tokenizer_path)
    dm.setup("fit")
    assert len(dm.train_dataset) == 10 and len(dm.val_dataset) == 3
    assert dm.steps_per_epoch() == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch.is_image is True
    assert batch.sam_frames.shape == (4, 1, 3, S, S) and batch.beit_frames.shape == (4, 1, 3, HB, HB)
    assert batch.masks.shape == (4, 1, S, S) and batch.valid.shape == (4, 1)
    assert batch.text_ids.shape[0] == 4 and batch.text_padding_mask.dtype == torch.bool
    assert isinstance(dm.collate, ReferringImageCollate)
    val = next(iter(dm.val_dataloader()))
    assert val.is_image is True and len(val.orig_masks) == 3  # val_batch_size = batch_size = 4
    assert [m.shape for m in val.orig_masks] == [(1, 20, 28), (1, 20, 28), (1, 18, 24)]


def test_datamodule_options(coco_root: Path, tokenizer_path: Path) -> None:
    dm = _datamodule(coco_root, tokenizer_path, names=["refcocog"], val_name="refcoco+", val_batch_size=1)
    dm.setup("fit")
    assert len(dm.train_dataset) == 2 and dm.val_dataset.source.name == "refcoco+/val"
    assert dm.photometric is False and dm.train_dataset.transform.photometric is False
    assert next(iter(dm.val_dataloader())).sam_frames.shape[0] == 1
    with pytest.raises(ValueError, match="num_frames"):
        _datamodule(coco_root, tokenizer_path, num_frames=5)


def test_config_file_matches_the_datamodule() -> None:
    cfg = composed_data_config("refcoco")
    assert cfg["_target_"] == "data_modules.refcoco.RefCOCODataModule"
    assert cfg["names"] == list(NAMES) and cfg["batch_size"] == 8 and cfg["photometric"] is False
    assert cfg["tokenizer_path"] == "${paths.weights_dir}/beit3.spm"


# ------------------------------------------------------------------------------------------------ training


def test_one_training_step_through_the_image_path(coco_root: Path, tokenizer_path: Path) -> None:
    from helpers.datasets import model_view_sizes
    from helpers.tiny import make_tiny_model

    from mpgsam2.losses import MPGSAM2Criterion

    model = make_tiny_model(freeze_image_encoder=False)
    dm = RefCOCODataModule(
        root=str(coco_root), tokenizer_path=str(tokenizer_path), batch_size=2, **model_view_sizes(model)
    )
    dm.setup("fit")
    assert dm.tokenizer_vocab_size <= model.config.beit3["vocab_size"]
    batch = next(iter(dm.train_dataloader()))
    assert batch.is_image is True
    out = model.forward_images(
        batch.sam_frames[:, 0], batch.beit_frames[:, 0], batch.text_ids, batch.text_padding_mask
    )
    size = model.sam.image_size
    assert out.pred_masks.shape == (2, 1, size, size) and out.sentence_scores.shape == (2,)
    losses = MPGSAM2Criterion()(
        out.pred_masks.unsqueeze(1),
        out.sentence_scores.unsqueeze(1),
        batch.masks,
        batch.valid,
    )
    loss = losses["loss_total"]
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    tokens = Beit3Tokenizer(tokenizer_path)
    assert tokens.pad_id == dm.collate.tokenizer.pad_id


def test_the_old_import_paths_give_the_moved_objects() -> None:
    # the datasets moved to image_dataset and the COCO decoding to coco_masks; code importing them from their
    # old modules gets the same objects
    from mpgsam2.data import coco_masks, image_dataset, mevis, refcoco

    for name in ("ReferringImageDataset", "ReferringImageEvalDataset", "ReferringImageCollate"):
        assert getattr(refcoco, name) is getattr(image_dataset, name)
    assert refcoco.decode_segmentation is coco_masks.decode_segmentation
    assert mevis.rle_counts is coco_masks.rle_counts
    with pytest.raises(AttributeError, match="ReferringImageDatset"):
        refcoco.ReferringImageDatset  # noqa: B018
