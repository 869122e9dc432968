"""RefCOCO / RefCOCO+ / RefCOCOg for image pre-training (spec §2.1 stage 1, §2.4, §1.7).

Original: ``datasets/refexp.py`` (``ModulatedDetection``, ``ConvertCocoPolysToMask``) and ``make_coco_transforms``;
``main_pretrain.py --dataset_file all`` concatenates the three training splits.

Layout (ReferFormer's conversion, ``tools/data/convert_refexp_to_coco.py``; the original's ``--coco_path``)::

    <root>/train2014/COCO_train2014_<id>.jpg               every split's images (RefCOCO uses COCO train2014)
    <root>/<name>/instances_<name>_<split>.json            name: refcoco | refcoco+ | refcocog

The split-by (unc for RefCOCO and RefCOCO+, umd for RefCOCOg) is fixed by the conversion and does not appear in
the file names. Splits: train, val, testA, testB (refcoco, refcoco+); train, val, test (refcocog). Each json is
COCO-style with ONE ``images`` entry per (referred object, sentence) and one annotation for it::

    images:      {"id": k, "file_name", "height", "width", "caption", "original_id": <COCO image id>,
                  "dataset_name"}
    annotations: {"id": k, "image_id": k, "segmentation": polygons | RLE, "bbox", "area", "iscrowd",
                  "category_id", "original_id": <COCO annotation id>}

The target of a sample is the union of its annotations' masks (the conversion writes exactly one). Masks are
decoded with pycocotools: polygon lists, compressed RLE (``counts`` a string) and uncompressed RLE (``counts`` a
list of run lengths, column-major).

deviation: the original drops ``iscrowd`` annotations (the sample is then redrawn for lack of a target); here
every annotation of the sample is its target, whatever its crowd flag. The original also redraws samples whose
box is degenerate; :class:`ReferringImageDataset` redraws those whose mask is empty at the SAM resolution.

Memory: the three training files hold about 321k samples whose polygons would be millions of Python floats per
process (and DataLoader workers copy whatever their reference counts touch). Each sample is therefore pickled
into one flat byte buffer at load time and unpickled when it is read.
"""

from __future__ import annotations

import gc
import logging
import pickle
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as coco_mask
from torch.utils.data import Dataset

from mpgsam2.data.batch import ImageRef, ItemMeta, ReferringItem
from mpgsam2.data.collate import ReferringCollate
from mpgsam2.data.errors import DatasetError
from mpgsam2.data.indexing import ResamplingDataset, make_item
from mpgsam2.data.mevis import rle_counts
from mpgsam2.data.records import validate_path_component
from mpgsam2.data.sources import load_json, read_rgb_frames
from mpgsam2.data.transforms import ClipTransform
from mpgsam2.data.video_dataset import normalize_caption

__all__ = [
    "REFCOCO_SPLITS",
    "RefCOCOSample",
    "RefCOCOSource",
    "ReferringImageCollate",
    "ReferringImageDataset",
    "ReferringImageEvalDataset",
    "decode_segmentation",
    "swap_captions_within_image",
]

log = logging.getLogger(__name__)

# name -> (split-by of the conversion, its splits), from ReferFormer's convert_refexp_to_coco.py
REFCOCO_SPLITS: dict[str, tuple[str, tuple[str, ...]]] = {
    "refcoco": ("unc", ("train", "val", "testA", "testB")),
    "refcoco+": ("unc", ("train", "val", "testA", "testB")),
    "refcocog": ("umd", ("train", "val", "test")),
}


@dataclass(frozen=True)
class RefCOCOSample:
    """One (image, sentence) entry of a converted RefCOCO json.

    Attributes:
        sample_id: the ``images`` entry's ``id`` (one per sentence; unique in the file).
        image_id: the COCO image id (``original_id``; ``sample_id`` when the entry has none).
        ann_ids: the COCO ids of the referred annotation(s) (``original_id``, else the annotation ``id``).
        file_name: the image file in ``<root>/train2014``.
        height / width: the image size stated by the json (checked against the file when read).
        caption: the sentence as in the file.
        segmentations: the annotations' raw ``segmentation`` values (polygon lists or RLE dicts).
    """

    sample_id: int
    image_id: int
    ann_ids: tuple[int, ...]
    file_name: str
    height: int
    width: int
    caption: str
    segmentations: tuple[object, ...]


class _PackedList:
    """A read-only list of picklable objects stored as one uint8 buffer plus offsets (few Python objects)."""

    def __init__(self, objects: Sequence[object]) -> None:
        blobs = [pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL) for o in objects]
        self._ends = np.cumsum(np.asarray([len(b) for b in blobs], dtype=np.int64))
        self._data = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> object:
        start = int(self._ends[index - 1]) if index > 0 else 0
        return pickle.loads(self._data[start : int(self._ends[index])].tobytes())


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def decode_segmentation(segmentation: object, height: int, width: int, where: str) -> np.ndarray:
    """Decodes one COCO ``segmentation`` to a bool (height, width) mask.

    Args:
        segmentation: a list of polygons ``[[x0, y0, x1, y1, ...], ...]``, a compressed RLE ``{"size": [h, w],
            "counts": str}`` or an uncompressed RLE ``{"size": [h, w], "counts": [run, ...]}`` (column-major runs
            starting with background).
        height / width: the image size.
        where: prefix of error messages (the json file and the annotation).

    Returns:
        bool (height, width).

    Polygons of fewer than 3 points cover no area and are skipped (pycocotools would read a 4-number list as a
    box); a segmentation made only of those gives an empty mask.

    Raises:
        DatasetError: malformed polygons (odd length, non-numbers), an RLE of another size than the image, run
            lengths that do not add up to height * width, or an undecodable compressed RLE.
    """
    if isinstance(segmentation, list):
        polygons = []
        for k, poly in enumerate(segmentation):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                raise DatasetError(f"{where}: polygon {k} must be a list of numbers, found {poly!r:.80}")
            if len(poly) % 2:
                raise DatasetError(f"{where}: polygon {k} has an odd number of coordinates ({len(poly)})")
            if len(poly) >= 6:
                polygons.append([float(v) for v in poly])
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rles = coco_mask.frPyObjects(polygons, height, width)
        return coco_mask.decode(rles).any(axis=2)
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        counts = segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            raise DatasetError(f"{where}: RLE 'size' must be [height, width], found {size!r:.80}")
        if tuple(size) != (height, width):
            raise DatasetError(
                f"{where}: RLE size {size[0]}x{size[1]} (HxW) does not match the image's {height}x{width}"
            )
        if isinstance(counts, list):
            if not all(_is_int(v) and v >= 0 for v in counts):
                raise DatasetError(f"{where}: uncompressed RLE 'counts' must be non-negative integers")
            if sum(counts) != height * width:
                raise DatasetError(
                    f"{where}: uncompressed RLE runs add up to {sum(counts)} pixels, the image has "
                    f"{height}x{width} = {height * width}"
                )
            rle = coco_mask.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            data = counts.encode() if isinstance(counts, str) else counts
            # pycocotools trusts the string: runs that stop short of the image silently become background, and
            # longer ones write past its buffer
            try:
                covered = int(rle_counts(data).sum())
                problem = None if covered == height * width else f"its runs cover {covered} pixels"
            except ValueError as err:
                problem = str(err)
            if problem is not None:
                raise DatasetError(
                    f"{where}: cannot decode the compressed RLE: {problem}; the image has "
                    f"{height}x{width} = {height * width}"
                )
            rle = {"size": [height, width], "counts": data}
        else:
            raise DatasetError(
                f"{where}: RLE 'counts' must be a string or a list, found {type(counts).__name__}"
            )
        try:
            return coco_mask.decode(rle).astype(bool)
        except ValueError as err:  # pycocotools: "Invalid RLE mask representation"
            raise DatasetError(f"{where}: cannot decode the compressed RLE: {err}") from err
    raise DatasetError(
        f"{where}: 'segmentation' must be a list of polygons or an RLE object, found {type(segmentation).__name__}"
    )


class RefCOCOSource:
    """One converted RefCOCO-family json: the samples, their images and their masks.

    Args:
        root: the folder holding ``train2014/`` and the ``<name>/`` folders (ReferFormer's ``data/coco``, the
            original's ``--coco_path``). A folder that instead holds them in a ``coco/`` subfolder works too.
        name: ``"refcoco"``, ``"refcoco+"`` or ``"refcocog"``.
        split: one of the name's splits (see :data:`REFCOCO_SPLITS`).

    Attributes:
        name: ``"<name>/<split>"``, e.g. ``"refcoco+/train"``.
        dataset: ``<name>``; split: ``<split>``; split_by: ``"unc"`` or ``"umd"`` (informational).
        annotation_file: the json; image_dir: ``<root>/train2014``.
        has_masks: always True.

    The json is parsed and its structure checked at construction (entries, ids, image references, RLE sizes);
    images are opened and polygons decoded only when a sample is read.

    Raises:
        ValueError: unknown name or split.
        DatasetError: naming the json when it is missing, not JSON, lacks ``images`` / ``annotations``, has an
            entry without a usable ``id`` / ``file_name`` / ``height`` / ``width`` / ``caption``, a duplicated
            image id, an annotation of an unknown image or without a segmentation, an RLE of another size than
            its image, an image without annotation, or an unsafe file name.
    """

    def __init__(self, root: str | Path, name: str = "refcoco", split: str = "train") -> None:
        if name not in REFCOCO_SPLITS:
            raise ValueError(f"RefCOCO dataset name must be one of {sorted(REFCOCO_SPLITS)}, got {name!r}")
        split_by, splits = REFCOCO_SPLITS[name]
        if split not in splits:
            raise ValueError(f"{name} ({split_by} split) has the splits {splits}, got {split!r}")
        root = Path(root)
        if not (root / name).is_dir() and (root / "coco" / name).is_dir():
            root = root / "coco"
        self.root = root
        self.dataset = name
        self.split = split
        self.split_by = split_by
        self.name = f"{name}/{split}"
        self.annotation_file = root / name / f"instances_{name}_{split}.json"
        self.image_dir = root / "train2014"
        self.has_masks = True
        # The json becomes millions of small objects that hold no cycles: pause the cyclic GC, which would
        # otherwise rescan them repeatedly while they are created.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._samples = _PackedList(self._parse())
        finally:
            if gc_was_enabled:
                gc.enable()

    def __repr__(self) -> str:
        return (
            f"RefCOCOSource(root={str(self.root)!r}, name={self.dataset!r}, split={self.split!r}, "
            f"samples={len(self)})"
        )

    def __len__(self) -> int:
        return len(self._samples)

    def sample(self, index: int) -> RefCOCOSample:
        """The ``index``-th sample, in the json's ``images`` order."""
        if not 0 <= index < len(self._samples):
            raise IndexError(f"{self.name}: sample {index} out of range for {len(self._samples)} samples")
        return self._samples[index]  # type: ignore[return-value]

    def image_path(self, sample: RefCOCOSample) -> Path:
        """The image file of ``sample``."""
        return self.image_dir / sample.file_name

    # ----------------------------------------------------------------------------------------------- parsing

    def _parse(self) -> list[RefCOCOSample]:
        src = self.annotation_file
        data = load_json(src, f"{self.dataset} annotation file")
        images, annotations = data.get("images"), data.get("annotations")
        if not isinstance(images, list):
            raise DatasetError(f"{src}: missing the top-level 'images' list (found keys {sorted(data)[:6]})")
        if not isinstance(annotations, list):
            raise DatasetError(
                f"{src}: missing the top-level 'annotations' list (found keys {sorted(data)[:6]})"
            )

        entries: dict[int, dict[str, object]] = {}
        for k, img in enumerate(images):
            where = f"{src}: images[{k}]"
            if not isinstance(img, dict):
                raise DatasetError(f"{where}: expected an object, found {type(img).__name__}")
            image_id = img.get("id")
            if not _is_int(image_id):
                raise DatasetError(f"{where}: 'id' must be an integer, found {image_id!r}")
            where = f"{src}: image id {image_id}"
            if image_id in entries:
                raise DatasetError(f"{where}: the id appears twice in 'images'")
            for key in ("height", "width"):
                if not _is_int(img.get(key)) or img[key] < 1:  # type: ignore[operator]
                    raise DatasetError(f"{where}: {key!r} must be a positive integer, found {img.get(key)!r}")
            if not isinstance(img.get("caption"), str):
                raise DatasetError(
                    f"{where}: missing the sentence 'caption' (a string), found {img.get('caption')!r}"
                )
            validate_path_component(img.get("file_name"), f"image id {image_id}: file_name", src)
            entries[image_id] = img

        segmentations: dict[int, list[object]] = {}
        ann_ids: dict[int, list[int]] = {}
        for k, ann in enumerate(annotations):
            if not isinstance(ann, dict):
                raise DatasetError(f"{src}: annotations[{k}]: expected an object, found {type(ann).__name__}")
            where = f"{src}: annotation id {ann.get('id', f'? (annotations[{k}])')}"
            image_id = ann.get("image_id")
            if not _is_int(image_id) or image_id not in entries:
                raise DatasetError(f"{where}: refers to image id {image_id!r}, which is not in 'images'")
            if "segmentation" not in ann:
                raise DatasetError(f"{where}: missing 'segmentation'")
            seg = ann["segmentation"]
            img = entries[image_id]
            if isinstance(seg, dict):
                size = seg.get("size")
                if isinstance(size, list) and tuple(size) != (img["height"], img["width"]):
                    raise DatasetError(
                        f"{where}: RLE size {size!r} does not match image id {image_id}'s "
                        f"[height, width] = [{img['height']}, {img['width']}]"
                    )
            elif not isinstance(seg, list):
                raise DatasetError(
                    f"{where}: 'segmentation' must be a list of polygons or an RLE object, "
                    f"found {type(seg).__name__}"
                )
            original = ann.get("original_id", ann.get("id"))
            segmentations.setdefault(image_id, []).append(seg)
            ann_ids.setdefault(image_id, []).append(int(original) if _is_int(original) else -1)

        samples = []
        for image_id, img in entries.items():
            if image_id not in segmentations:
                raise DatasetError(f"{src}: image id {image_id} ({img['file_name']}) has no annotation")
            original = img.get("original_id")
            samples.append(
                RefCOCOSample(
                    sample_id=image_id,
                    image_id=int(original) if _is_int(original) else image_id,
                    ann_ids=tuple(ann_ids[image_id]),
                    file_name=str(img["file_name"]),
                    height=int(img["height"]),  # type: ignore[arg-type]
                    width=int(img["width"]),  # type: ignore[arg-type]
                    caption=str(img["caption"]),
                    segmentations=tuple(segmentations[image_id]),
                )
            )
        return samples

    # ----------------------------------------------------------------------------------------------- reading

    def read_image(self, sample: RefCOCOSample) -> np.ndarray:
        """uint8 (H, W, 3) RGB.

        Raises:
            DatasetError: naming the image if it is missing, truncated, undecodable or not of the json's size.
        """
        path = self.image_path(sample)
        image = read_rgb_frames([path])[0]
        if image.shape[:2] != (sample.height, sample.width):
            raise DatasetError(
                f"{path}: image is {image.shape[1]}x{image.shape[0]} (WxH) but {self.annotation_file} gives "
                f"{sample.width}x{sample.height} for sample id {sample.sample_id}"
            )
        return image

    def read_mask(self, sample: RefCOCOSample) -> np.ndarray:
        """The referred object: bool (H, W), the union of the sample's annotations.

        Raises:
            DatasetError: naming the json and the annotation on a malformed segmentation.
        """
        out = np.zeros((sample.height, sample.width), dtype=bool)
        for ann_id, seg in zip(sample.ann_ids, sample.segmentations):
            where = f"{self.annotation_file}: annotation {ann_id} (image id {sample.sample_id})"
            out |= decode_segmentation(seg, sample.height, sample.width, where)
        return out


def swap_captions_within_image(source: RefCOCOSource, seed: int = 0) -> list[tuple[int, str]]:
    """For a "does it read?" control: each sample paired with the caption of another object of its image.

    Returns:
        ``(sample index, caption)`` for every sample that has a partner (a sample of the same COCO image whose
        annotations differ); samples without one are dropped. Deterministic in ``seed`` and per sample.
    """
    by_image: dict[int, list[int]] = {}
    samples = [source.sample(i) for i in range(len(source))]
    for i, s in enumerate(samples):
        by_image.setdefault(s.image_id, []).append(i)
    out = []
    for i, s in enumerate(samples):
        others = [j for j in by_image[s.image_id] if samples[j].ann_ids != s.ann_ids]
        if others:
            rng = random.Random(f"swap/{seed}/{source.name}/{s.sample_id}")
            out.append((i, samples[rng.choice(others)].caption))
    return out


def _meta(source: RefCOCOSource, sample: RefCOCOSample) -> ItemMeta:
    stem = Path(sample.file_name).stem
    return ItemMeta(
        # an image is a 1-frame video per sentence, so code written for videos reads it as one
        video=stem,
        exp_id=str(sample.sample_id),
        frame_names=[stem],
        frame_indices=[0],
        orig_size=(sample.height, sample.width),
        image=ImageRef(
            dataset=source.dataset,
            split=source.split,
            sample_id=sample.sample_id,
            image_id=sample.image_id,
            ann_id=sample.ann_ids[0] if len(sample.ann_ids) == 1 else list(sample.ann_ids),
            file_name=sample.file_name,
        ),
    )


class ReferringImageDataset(ResamplingDataset):
    """Training items of one or more RefCOCO sources, concatenated (stage 1: refcoco + refcoco+ + refcocog).

    Item ``i`` is sample ``i`` of the concatenation (sources in the given order). Augmentation (spec §2.4,
    RefCOCO): horizontal flip with p = ``transform.hflip_p`` swapping "left"/"right" in the caption, then resize;
    no photometric distortion (pass ``ClipTransform(..., photometric=False)``). deviation: both views come from
    the flipped image (the original computes the BEiT view before the flip, spec §8.1).

    Resampling: when the target is empty at the SAM resolution, a new index is drawn uniformly (parity: the
    original redraws ``random.randint`` when no valid box is left); after ``max_resample`` failed attempts the
    last item is returned with ``valid`` False and a warning.

    Reproducibility: item ``i`` is a pure function of ``(seed, epoch, i)``; call :meth:`set_epoch` every epoch.

    Args:
        sources: the RefCOCO sources (at least one).
        transform: ``ClipTransform(..., train=True, photometric=False)``.
        seed: base seed.
        max_resample: attempts after the first before giving up on a non-empty target.

    Items (:class:`~mpgsam2.data.batch.ReferringItem`): sam_frames float32 (1, 3, S, S); beit_frames float32 (1, 3, Hb, Hb); masks float32 (1, S, S) 0/1;
    valid bool (1,); caption str (lower-cased, whitespace-normalised, then left/right swapped if flipped);
    meta dict(dataset, split, sample_id, image_id, ann_id, file_name, orig_size=(H, W), and the video keys video,
    exp_id, frame_names, frame_indices).
    """

    _rng_tag = "image"
    _unit = "samples"

    def __init__(
        self,
        sources: Sequence[RefCOCOSource],
        transform: ClipTransform,
        seed: int = 0,
        max_resample: int = 10,
    ) -> None:
        if not sources:
            raise ValueError("ReferringImageDataset needs at least one source")
        self.sources = list(sources)
        self.transform = transform
        self._init_index([len(s) for s in self.sources], seed, max_resample)

    def locate(self, index: int) -> tuple[RefCOCOSource, RefCOCOSample]:
        """The source and sample of item ``index``."""
        k, offset = self._position(index)
        return self.sources[k], self.sources[k].sample(offset)

    def _draw(self, index: int, rng: random.Random) -> tuple[tuple[RefCOCOSource, RefCOCOSample], np.ndarray]:
        source, sample = self.locate(index)
        return (source, sample), source.read_mask(sample)

    def _warn_exhausted(self, index: int) -> None:
        log.warning(
            "no sample with a non-empty target in %d attempts from item %d; using the last one (valid False)",
            self.max_resample + 1,
            index,
        )

    def _make_item(
        self, source: RefCOCOSource, sample: RefCOCOSample, mask: np.ndarray, np_rng: np.random.Generator
    ) -> ReferringItem:
        image = source.read_image(sample)
        sam, beit, target, caption = self.transform(
            image[None], mask[None], normalize_caption(sample.caption), rng=np_rng
        )
        assert target is not None
        return make_item(sam, beit, target, caption, _meta(source, sample))


class ReferringImageEvalDataset(Dataset):
    """Evaluation items of one RefCOCO source: one per (image, sentence), T = 1, no augmentation.

    Args:
        source: the split (e.g. ``refcoco/val``).
        transform: ``ClipTransform(..., train=False)``.
        swap_captions: give every sample the caption of another object of its image (samples without one are
            dropped; see :func:`swap_captions_within_image`); a control that the model reads the sentence.
        seed: chooses the swapped captions.

    Items (:class:`~mpgsam2.data.batch.ReferringItem`): the training fields with the caption RAW (parity: inference
    captions are not lower-cased, spec §1.1), plus ``orig_masks``: bool (1, H, W) at the original resolution (for
    J&F / IoU).
    """

    def __init__(
        self, source: RefCOCOSource, transform: ClipTransform, swap_captions: bool = False, seed: int = 0
    ) -> None:
        if getattr(transform, "train", False):
            raise ValueError("ReferringImageEvalDataset needs a transform with train=False (no augmentation)")
        self.source = source
        self.transform = transform
        self._entries: list[tuple[int, str | None]] = (
            list(swap_captions_within_image(source, seed))
            if swap_captions
            else [(i, None) for i in range(len(source))]
        )

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def sample_indices(self) -> list[int]:
        """The source's sample index of each item, in item order."""
        return [i for i, _ in self._entries]

    def __getitem__(self, index: int) -> ReferringItem:
        sample_index, caption = self._entries[index]
        sample = self.source.sample(sample_index)
        if caption is not None:
            sample = replace(sample, caption=caption)
        mask = self.source.read_mask(sample)
        image = self.source.read_image(sample)
        sam, beit, target, caption_out = self.transform(image[None], mask[None], sample.caption)
        assert target is not None
        item = make_item(sam, beit, target, caption_out, _meta(self.source, sample))
        item.orig_masks = torch.from_numpy(mask[None].copy())
        return item


class ReferringImageCollate(ReferringCollate):
    """:class:`~mpgsam2.data.collate.ReferringCollate` for image items (T = 1): its batches have
    ``is_image=True``, so the Lightning module and evaluation take the model's batched image path
    (``MPGSAM2.forward_images`` on ``sam_frames[:, 0]`` / ``beit_frames[:, 0]``, spec §1.7)."""

    is_image = True
