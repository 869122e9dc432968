"""MeViS reader, v1 and v2 (original: ``datasets/mevis.py`` for training, ``inference_mevis.py`` for valid; the
official v1 evaluation is ``tools/eval_mevis.py`` of henghuiding/MeViS).

Layout (the official release, henghuiding/MeViS README "File Structure")::

    <root>/<split>/<expressions file>          split in train, valid_u, valid (v2 also: test)
        {"videos": {<vid>: {"expressions": {<exp_id>: {"exp": str, "obj_id": [int, ...],
                                                         "anno_id": [int, ...]}},
                            "frames": [<name>, ...]}}}
    <root>/<split>/JPEGImages/<vid>/<name>.jpg
    <root>/<split>/mask_dict.json               train and valid_u only
        {<anno_id as str>: [COCO RLE {"size": [H, W], "counts": str} or null, one per frame of the video]}

One expression may refer to several objects: its target is the union of the masks of its ``anno_id`` s
(spec §2.4). ``null`` means the object is not in that frame. The per-frame lists follow the order of the video's
``frames`` list in the json (``tools/eval_mevis.py`` and ``inference_mevis.py`` index them that way).

**Versions.** MeViS v1 (ICCV 2023; CodaLab server 15094) names every split's file ``meta_expressions.json``. MeViS
v2 (TPAMI 2025; Codabench server 11420) keeps the folders and the formats but names the files
``meta_expressions_v2.json`` (train, valid_u), ``meta_expressions_v2_release.json`` (valid) and
``meta_expressions_text_release.json`` (the PVUW 2026 text test, read from a ``test`` folder: the folder name is an
assumption, the release was not available here), see :data:`MEVIS_EXPRESSION_FILES`. The version is given
(``data.version``) or detected from the files (:func:`mevis_expressions_file`, logged); a split folder holding
both versions' files without a given version is an error naming both. v2 adds **no-target** expressions: empty
``obj_id`` and ``anno_id`` lists (no other flag) in the splits with ground truth; their target is empty on every
frame (:attr:`ExpressionRecord.no_target`). Expressions also exist as audio; an expression entry without the
sentence ``exp`` but with a key naming audio (``"audio"`` in its name: inferred, the released json's audio keys
were not available here) is an audio-only expression: counted and skipped, with one log line per split.

``mask_dict.json`` is optional where the split has no ground truth (v1/v2 valid, v2 test).

``mask_dict.json`` of the train split is large (GBs): it is read once, lazily (first :meth:`MeViSSource.read_masks`
or :meth:`MeViSSource.load_masks`), and kept in a compact form (one bytes string and two small arrays per
annotation) that forked DataLoader workers share and that pickles quickly for spawned ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from mpgsam2.data.coco_masks import rle_counts
from mpgsam2.data.errors import DatasetError
from mpgsam2.data.records import ExpressionRecord, VideoRecord
from mpgsam2.data.sources import (
    DIGITS,
    JsonVideoSource,
    image_size,
    load_json,
    load_videos_json,
    parse_expression_entry,
    parse_video_entry,
)

__all__ = [
    "MEVIS_EXPRESSION_FILES",
    "MEVIS_SPLITS",
    "MEVIS_VERSIONS",
    "MeViSSource",
    "detect_mevis_version",
    "mevis_expressions_file",
    "rle_counts",
]

log = logging.getLogger(__name__)

MEVIS_VERSIONS = ("v1", "v2")
# version -> split -> the expressions file of <root>/<split>/ (henghuiding/MeViS README and the v2 release)
MEVIS_EXPRESSION_FILES: dict[str, dict[str, str]] = {
    "v1": {
        "train": "meta_expressions.json",
        "valid_u": "meta_expressions.json",
        "valid": "meta_expressions.json",
    },
    "v2": {
        "train": "meta_expressions_v2.json",
        "valid_u": "meta_expressions_v2.json",
        "valid": "meta_expressions_v2_release.json",
        "test": "meta_expressions_text_release.json",  # PVUW 2026 text test (folder name assumed)
    },
}
MEVIS_SPLITS = ("train", "valid_u", "valid", "test")
_SPLITS_WITH_MASKS = ("train", "valid_u")


def _check_version(version: str | None) -> None:
    if version is not None and version not in MEVIS_VERSIONS:
        raise ValueError(f"MeViS version must be one of {MEVIS_VERSIONS} or None (detect), got {version!r}")


def mevis_expressions_file(root: str | Path, split: str, version: str | None = None) -> tuple[str, Path]:
    """The MeViS version of ``<root>/<split>`` and its expressions file.

    Args:
        version: ``"v1"`` / ``"v2"``, or None: detected from the files there.

    Raises:
        ValueError: an unknown version, or a split the version does not have.
        DatasetError: no version given and the folder holds both versions' files (naming both), or neither.
        ValueError: no version given and the split is one version's only (v2's ``test``) and its file is missing.
    """
    _check_version(version)
    split_dir = Path(root) / split
    if version is not None:
        names = MEVIS_EXPRESSION_FILES[version]
        if split not in names:
            raise ValueError(f"MeViS {version} has no split {split!r}; its splits: {sorted(names)}")
        return version, split_dir / names[split]
    candidates = {
        v: split_dir / names[split] for v, names in MEVIS_EXPRESSION_FILES.items() if split in names
    }
    present = {v: path for v, path in candidates.items() if path.is_file()}
    if len(present) > 1:
        raise DatasetError(
            f"{split_dir}: holds both {present['v1'].name} (MeViS v1) and {present['v2'].name} (MeViS v2); "
            "the two versions are scored differently and are not mixed: set data.version=v1 or data.version=v2"
        )
    if not present and len(candidates) == 1:
        ((only, path),) = candidates.items()
        raise ValueError(
            f"MeViS split must be one of {tuple(MEVIS_EXPRESSION_FILES['v1'])}, or {split!r} of MeViS {only} "
            f"only, whose {path} is not there"
        )
    if not present:
        expected = " or ".join(f"{path.name} ({v})" for v, path in candidates.items())
        raise DatasetError(f"{split_dir}: MeViS expressions file not found: expected {expected}")
    (found,) = present.items()
    return found


def detect_mevis_version(root: str | Path) -> str | None:
    """The MeViS version of a dataset folder, from the expressions files of its split folders; None when no
    split folder holds one.

    Raises:
        DatasetError: both versions' files are there (in one split folder or in different ones), naming both.
    """
    found: dict[str, Path] = {}
    for split in MEVIS_SPLITS:
        for version, names in MEVIS_EXPRESSION_FILES.items():
            path = Path(root) / split / names.get(split, "")
            if split in names and path.is_file():
                found.setdefault(version, path)
    if len(found) > 1:
        raise DatasetError(
            f"{root}: holds MeViS v1 ({found['v1']}) and MeViS v2 ({found['v2']}) expressions files; the two "
            "versions are scored differently and are not mixed: set data.version=v1 or data.version=v2"
        )
    return next(iter(found), None)


@dataclass(frozen=True)
class _AnnoRLE:
    """One annotation's masks over the frames of its video, compactly.

    sizes: int32 (n, 2) RLE (H, W) per frame, (-1, -1) where the object is absent (null);
    offsets: int64 (n + 1,) frame k's compressed counts are ``counts[offsets[k]:offsets[k + 1]]``.
    """

    sizes: np.ndarray
    offsets: np.ndarray
    counts: bytes

    def __len__(self) -> int:
        return len(self.sizes)


class MeViSSource(JsonVideoSource):
    """A MeViS split (v1 or v2) as a :class:`~mpgsam2.data.sources.ReferringVideoSource`.

    Args:
        root: the dataset folder (holding ``train/``, ``valid_u/``, ``valid/``).
        split: ``"train"``, ``"valid_u"`` (public ground truth, scored locally), ``"valid"`` (server) or, v2 only,
            ``"test"`` (the PVUW 2026 text test, server).
        version: ``"v1"``, ``"v2"``, or None: detected from the files (see :func:`mevis_expressions_file`).

    Attributes:
        name: ``"mevis/<split>"`` (v1, as before) or ``"mevis_v2/<split>"``.
        version: ``"v1"`` or ``"v2"``.
        expressions: one record per expression, ``obj_ids`` = its ``anno_id`` s (the union is the target; empty for
            ``valid``, whose ids are not used, and for no-target expressions, ``no_target=True``). Videos in json
            order for train (parity: ``datasets/mevis.py``), sorted for valid / valid_u (parity:
            ``inference_mevis.py``); expressions in json order. Audio-only expressions are left out.
        videos: the videos, same order; frames in the json's order (see the module docstring).
        has_masks: True for train and valid_u, False for valid (and test).
        num_audio_only / num_with_audio: expressions skipped as audio-only / read as text that also carry audio.
        expressions_file / mask_file / frames_dir: the files read.

    Raises:
        ValueError: unknown split or version.
        DatasetError: naming the json (and the video / expression) when it is missing, not JSON, lacks
            ``videos`` / ``frames`` / ``expressions`` / ``exp`` / ``anno_id`` (train, valid_u), has an
            ``anno_id`` that is not an integer, an unsafe video id, expression id or frame name, a frame listed
            twice; naming both files when the split folder holds v1's and v2's and no version is given; or naming
            ``mask_dict.json`` when it is missing for train / valid_u.
    """

    def __init__(self, root: str | Path, split: str = "train", version: str | None = None) -> None:
        if split not in MEVIS_SPLITS:
            raise ValueError(f"MeViS split must be one of {MEVIS_SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.version, self.expressions_file = mevis_expressions_file(self.root, split, version)
        log.info(
            "MeViS %s/%s: %s (%s)",
            self.version,
            split,
            self.expressions_file,
            "data.version" if version is not None else "detected from the files",
        )
        # parity of names: v1 keeps the name every earlier record and staging manifest carries
        self.name = f"mevis/{split}" if self.version == "v1" else f"mevis_{self.version}/{split}"
        split_dir = self.root / split
        self.mask_file = split_dir / "mask_dict.json"
        self.frames_dir = split_dir / "JPEGImages"
        self.has_masks = split in _SPLITS_WITH_MASKS
        self.num_audio_only = 0
        self.num_with_audio = 0

        videos_json = load_videos_json(self.expressions_file, "MeViS expressions file")
        video_ids = list(videos_json)
        if split != "train":
            video_ids.sort()  # parity: inference_mevis.py iterates sorted(videos)

        self.videos: list[VideoRecord] = []
        self.expressions: list[ExpressionRecord] = []
        # (video id, exp id) -> the mask_dict keys of its anno_ids, spelled as in the json (parity: str(x)).
        self._anno_keys: dict[tuple[str, str], tuple[str, ...]] = {}
        for vid in video_ids:
            video, expressions = self._parse_video(vid, videos_json[vid])
            self.videos.append(video)
            self.expressions.extend(expressions)
        if self.num_audio_only or self.num_with_audio:
            log.info(
                "%s: %d audio-only expression(s) skipped (text only), %d expression(s) read from their text "
                "(their audio is not used)",
                self.expressions_file,
                self.num_audio_only,
                self.num_with_audio,
            )
        if self.has_masks and not self.mask_file.is_file():
            raise DatasetError(
                f"{self.mask_file}: MeViS mask file not found; split {split!r} needs it for its ground truth"
            )
        self._masks: dict[str, _AnnoRLE] | None = None

    @property
    def num_no_target(self) -> int:
        """Expressions that refer to nothing in their video (v2)."""
        return sum(e.no_target for e in self.expressions)

    # ----------------------------------------------------------------------------------------------- parsing

    def _parse_video(self, vid: str, entry: object) -> tuple[VideoRecord, list[ExpressionRecord]]:
        src = self.expressions_file
        # deviation: json order, not sorted(frames) as datasets/mevis.py. The mask_dict lists are indexed by the
        # json position (tools/eval_mevis.py, inference_mevis.py); the release's names are zero-padded and
        # already sorted, so the two agree on it.
        video, expressions = parse_video_entry(src, vid, entry, self.frames_dir, sort_frames=False)
        records = []
        for exp_id, exp in expressions.items():
            has_audio = isinstance(exp, dict) and any("audio" in str(key).lower() for key in exp)
            if has_audio and not (isinstance(exp.get("exp"), str) and exp["exp"].strip()):
                self.num_audio_only += 1  # an audio expression: this project reads text only
                continue
            self.num_with_audio += has_audio
            exp, caption, where = parse_expression_entry(src, vid, exp_id, exp)
            obj_ids: tuple[int, ...] = ()
            no_target = False
            if self.has_masks:
                keys, obj_ids = _parse_anno_ids(exp.get("anno_id"), where)
                self._anno_keys[(vid, exp_id)] = keys
                # v2 marks a no-target expression by empty obj_id and anno_id lists only
                no_target = self.version == "v2" and not keys
            records.append(
                ExpressionRecord(
                    video=video, exp_id=exp_id, caption=caption, obj_ids=obj_ids, no_target=no_target
                )
            )
        return video, records

    # ----------------------------------------------------------------------------------------------- masks

    def load_masks(self) -> None:
        """Reads ``mask_dict.json`` once (no-op when already loaded), keeping only the annotations that the
        expressions refer to.

        Raises:
            DatasetError: naming ``mask_dict.json`` when the split has no masks, the file is missing or not a
                JSON object, an expression's ``anno_id`` is not in it, an annotation is not a list with one entry
                per frame of its video, or an entry is neither null nor a COCO RLE object.
        """
        if self._masks is not None:
            return
        if not self.has_masks:
            raise DatasetError(
                f"{self.mask_file}: split {self.split!r} has no public ground truth; masks cannot be read"
            )
        log.info("%s: loading %s", self.name, self.mask_file)
        raw = load_json(self.mask_file, "MeViS mask file")
        masks: dict[str, _AnnoRLE] = {}
        for expr in self.expressions:
            video = expr.video
            for key in self._anno_keys[(video.video_id, expr.exp_id)]:
                anno = masks.get(key)
                if anno is None:
                    if key not in raw:
                        raise DatasetError(
                            f"{self.mask_file}: no annotation {key!r}, referred to by expression {expr.exp_id!r} "
                            f"of video {video.video_id!r} in {self.expressions_file}"
                        )
                    anno = masks[key] = _compact(raw[key], self.mask_file, key)
                if len(anno) != video.num_frames:
                    raise DatasetError(
                        f"{self.mask_file}: annotation {key!r} has {len(anno)} frame entries but video "
                        f"{video.video_id!r} (expression {expr.exp_id!r}) has {video.num_frames} frames in "
                        f"{self.expressions_file}"
                    )
        self._masks = masks

    def anno_keys(self, expression: ExpressionRecord) -> tuple[str, ...]:
        """The ``mask_dict.json`` keys of the expression's objects."""
        key = (expression.video.video_id, expression.exp_id)
        return self._anno_keys.get(key, tuple(str(i) for i in expression.obj_ids))

    def read_masks(self, expression: ExpressionRecord, indices: Sequence[int]) -> np.ndarray:
        """The expression's target in frames ``indices``: bool (t, H, W), the union of its annotations
        (all False where every one of them is null). Loads ``mask_dict.json`` on the first call.

        Raises:
            DatasetError: see :meth:`load_masks`; naming ``mask_dict.json`` when an RLE's size differs from its
                frame's or its counts are corrupt; naming the frame when its header cannot be read.
        """
        self.load_masks()
        assert self._masks is not None
        video = expression.video
        keys = self.anno_keys(expression)
        out = []
        for i in indices:
            h, w = image_size(video.frame_paths[i])
            mask = np.zeros((h, w), dtype=bool)
            for key in keys:
                anno = self._masks.get(key)
                if anno is None:  # a record that was not built by this source
                    raise DatasetError(
                        f"{self.mask_file}: no annotation {key!r} (expression {expression.exp_id!r} of video "
                        f"{video.video_id!r})"
                    )
                rh, rw = (int(v) for v in anno.sizes[i])
                if rh < 0:
                    continue  # null: the object is not in this frame
                where = f"{self.mask_file}: annotation {key!r}, frame {i} ({video.video_id}/{video.frame_names[i]})"
                if (rh, rw) != (h, w):
                    raise DatasetError(
                        f"{where}: RLE size is {rw}x{rh} (WxH) but the frame {video.frame_paths[i]} is {w}x{h}"
                    )
                try:
                    mask |= _decode_rle(anno.counts[anno.offsets[i] : anno.offsets[i + 1]], h, w)
                except ValueError as err:
                    raise DatasetError(f"{where}: corrupt RLE counts: {err}") from err
            out.append(mask)
        return np.stack(out) if out else np.zeros((0, 0, 0), dtype=bool)


def _parse_anno_ids(value: object, where: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``anno_id`` -> (mask_dict keys as the original spells them, ``str(x)``; the ids as integers)."""
    if not isinstance(value, list):
        raise DatasetError(f"{where}: 'anno_id' must be a list of annotation ids, found {value!r:.80}")
    keys, ids = [], []
    for x in value:
        if isinstance(x, int) and not isinstance(x, bool) and x >= 0:
            ids.append(x)
        elif isinstance(x, str) and DIGITS.fullmatch(x):
            ids.append(int(x))
        else:
            raise DatasetError(f"{where}: 'anno_id' entries must be non-negative integers, found {x!r}")
        keys.append(str(x))
    if len(set(keys)) != len(keys):
        raise DatasetError(f"{where}: 'anno_id' lists an annotation twice: {value!r}")
    return tuple(keys), tuple(ids)


def _compact(entries: object, path: Path, key: str) -> _AnnoRLE:
    """Validates one annotation's json list and packs it into an :class:`_AnnoRLE`."""
    if not isinstance(entries, list):
        raise DatasetError(
            f"{path}: annotation {key!r} must be a list of per-frame RLEs, found {type(entries).__name__}"
        )
    sizes = np.full((len(entries), 2), -1, dtype=np.int32)
    offsets = np.zeros(len(entries) + 1, dtype=np.int64)
    parts: list[bytes] = []
    for k, rle in enumerate(entries):
        if rle is not None:
            size = rle.get("size") if isinstance(rle, dict) else None
            counts = rle.get("counts") if isinstance(rle, dict) else None
            if (
                not isinstance(size, list)
                or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
            ):
                raise DatasetError(
                    f"{path}: annotation {key!r}, frame {k}: expected null or a COCO RLE object with "
                    f"'size': [H, W] and 'counts', found {json.dumps(rle)[:80]}"
                )
            h, w = size
            if isinstance(counts, str) and counts.isascii():
                packed = counts.encode("ascii")
            elif isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts):
                # Uncompressed RLE (counts as a list): pack it as pycocotools does, after checking its length
                # (pycocotools does not, and decoding a too-long run overflows its buffer).
                if sum(counts) != h * w:
                    raise DatasetError(
                        f"{path}: annotation {key!r}, frame {k}: RLE counts cover {sum(counts)} pixels, "
                        f"not {h}x{w} = {h * w}"
                    )
                packed = coco_mask.frPyObjects({"size": [h, w], "counts": counts}, h, w)["counts"]
            else:
                raise DatasetError(
                    f"{path}: annotation {key!r}, frame {k}: RLE 'counts' must be an ASCII string or a list of "
                    f"non-negative integers, found {json.dumps(counts)[:80]}"
                )
            sizes[k] = (h, w)
            parts.append(packed)
        offsets[k + 1] = offsets[k] + (len(parts[-1]) if rle is not None else 0)
    return _AnnoRLE(sizes=sizes, offsets=offsets, counts=b"".join(parts))


def _decode_rle(counts: bytes, height: int, width: int) -> np.ndarray:
    """bool (H, W) from a compressed RLE whose runs cover exactly H * W pixels (column-major, as COCO)."""
    runs = rle_counts(counts)
    total = int(runs.sum())
    if total != height * width:
        raise ValueError(f"the runs cover {total} pixels, not {height}x{width} = {height * width}")
    values = (np.arange(len(runs)) % 2).astype(bool)
    return np.repeat(values, runs).reshape(width, height).T
