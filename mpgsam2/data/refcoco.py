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
decoded with pycocotools (:func:`~mpgsam2.data.coco_masks.decode_segmentation`): polygon lists, compressed RLE
(``counts`` a string) and uncompressed RLE (``counts`` a list of run lengths, column-major).

deviation: the original drops ``iscrowd`` annotations (the sample is then redrawn for lack of a target); here
every annotation of the sample is its target, whatever its crowd flag. The original also redraws samples whose
box is degenerate; :class:`~mpgsam2.data.image_dataset.ReferringImageDataset` redraws those whose mask is empty
at the SAM resolution.

Memory: the three training files hold about 321k samples whose polygons would be millions of Python floats per
process (and DataLoader workers copy whatever their reference counts touch). Each sample is therefore pickled
into one flat byte buffer at load time and unpickled when it is read.
"""

from __future__ import annotations

import gc
import importlib
import pickle
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mpgsam2.data.coco_masks import decode_segmentation
from mpgsam2.data.errors import DatasetError
from mpgsam2.data.records import validate_path_component
from mpgsam2.data.sources import load_json, read_rgb_frames

if TYPE_CHECKING:
    from mpgsam2.data.image_dataset import (
        ReferringImageCollate,
        ReferringImageDataset,
        ReferringImageEvalDataset,
    )

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

# The torch datasets and collate of these sources live in image_dataset (which imports this module); their old
# import path keeps working, resolved on first use.
_MOVED_TO_IMAGE_DATASET = ("ReferringImageCollate", "ReferringImageDataset", "ReferringImageEvalDataset")


def __getattr__(name: str) -> object:
    if name in _MOVED_TO_IMAGE_DATASET:
        return getattr(importlib.import_module("mpgsam2.data.image_dataset"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
