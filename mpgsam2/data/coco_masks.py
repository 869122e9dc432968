"""COCO segmentations to masks: polygon lists and run-length encodings (RLE), checked before decoding.

COCO stores an object's mask as a list of polygons, a compressed RLE (``counts`` a string) or an uncompressed
RLE (``counts`` a list of run lengths); runs are column-major and start with background. pycocotools decodes
them but trusts its input (a compressed string whose runs overrun the image writes past its buffer), so the
RefCOCO and MeViS readers check run lengths with :func:`rle_counts` first and name the file on a bad one.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as coco_mask

from mpgsam2.data.errors import DatasetError

__all__ = ["decode_segmentation", "rle_counts"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def rle_counts(counts: bytes | str) -> np.ndarray:
    """Decodes COCO's compressed RLE string into its run lengths (pycocotools' ``rleFrString``, vectorised).

    pycocotools trusts the string: runs longer than the image write past its buffer. Readers check
    ``rle_counts(s).sum() == H * W`` before using a string.

    Args:
        counts: the ``"counts"`` string of a compressed RLE.

    Returns:
        int64 (m,) run lengths, alternating background / foreground, starting with background.

    Raises:
        ValueError: a character outside the alphabet, a string that ends inside a number, an over-long number,
            or a negative run.
    """
    data = counts.encode("utf-8") if isinstance(counts, str) else bytes(counts)
    c = np.frombuffer(data, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    bad = np.flatnonzero((c < 0) | (c >= 64))
    if bad.size:
        p = int(bad[0])
        raise ValueError(f"character {chr(data[p])!r} at {p} is not an RLE digit")
    # Each number is a little-endian run of 5-bit groups; bit 0x20 says "more groups follow".
    last = (c & 0x20) == 0
    if not last[-1]:
        raise ValueError("the string ends inside a run length")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 12:  # 60 bits; real runs need at most 7 groups
        raise ValueError(f"a run length spans {int(lengths.max())} characters")
    k = np.arange(c.size) - np.repeat(starts, lengths)  # group position within its number
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    negative = (c[ends] & 0x10) != 0  # sign bit of the last group
    x[negative] -= np.left_shift(1, 5 * lengths[negative])
    # Runs after the second are stored as differences to the run two before: a running sum per parity.
    out = x.copy()
    out[2::2] = np.cumsum(x[2::2])
    out[3::2] = x[1] + np.cumsum(x[3::2]) if x.size > 3 else x[3::2]
    if (out < 0).any():
        m = int(np.flatnonzero(out < 0)[0])
        raise ValueError(f"negative run length {int(out[m])} (run {m})")
    return out


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
