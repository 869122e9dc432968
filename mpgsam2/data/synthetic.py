"""The embedded default dataset: synthetic referring videos written in the Ref-YouTube-VOS layout.

Each video shows a few flat-coloured shapes drifting over a dark, smooth background. Every object differs from the
others of its video in colour, and each expression names exactly one object::

    "the {size} {colour} {shape} moving {direction}"     (every object)
    "the {colour} {shape}"                                (about half of the objects, a second expression)

and every video has one **no-target** expression, a long caption in a colour none of its objects has (random
size, shape and direction): it refers to nothing, its target is empty on every frame (MeViS v2's no-target
expressions; scored with N-acc, T-acc and Final, :class:`mpgsam2.metrics.NoTargetJFMetric`). It is written last,
with ``"obj_id": []``, which :class:`~mpgsam2.data.ytvos.RefYTVOSSource` reads as ``no_target``.

Objects move in a straight line at constant speed, may leave the frame (no pixels once fully outside) and may be
occluded (fixed depth order: object 1 is at the back; an occluded object's mask holds only its visible pixels).
Every object is fully inside frame 0 (the conditioning frame), at least half visible there, and visible in at
least half of the frames. A horizontal flip turns "moving left" into "moving right" and keeps every other word
true, so the caption swap of the flip augmentation stays consistent with the video.

The files are those of the official release, read by :class:`mpgsam2.data.ytvos.RefYTVOSSource`::

    <root>/meta_expressions/<split>/meta_expressions.json   {"videos": {vid: {"expressions": {...}, "frames": [...]}}}
                                                             (no-target expressions: "obj_id": [])
    <root>/<split>/meta.json                                 {"videos": {vid: {"objects": {"1": {"category", "frames"}}}}}
    <root>/<split>/JPEGImages/<vid>/<frame>.jpg              RGB, JPEG quality 95
    <root>/<split>/Annotations/<vid>/<frame>.png             palette PNG, pixel value = object id (0 = background)
    <root>/tokenizer.model                                   sentencepiece word model over the generator's words
    <root>/synthetic.json                                    format version and generation parameters

for ``<split>`` in ``train`` and ``valid``. Unlike the release, ``valid`` ships its annotations and object ids, so
J&F can be computed locally.

Everything is deterministic in ``SyntheticConfig.seed``: video ``i`` of a split draws from its own generator seeded
with ``(seed, split, i)``, so adding videos does not change the existing ones. The tokenizer does not depend on the
seed at all (its vocabulary is every word the generator can produce).
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

from mpgsam2.data.errors import DatasetError

__all__ = [
    "COLOURS",
    "DIRECTIONS",
    "FORMAT_VERSION",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "VOCABULARY",
    "SyntheticConfig",
    "davis_palette",
    "generate_synthetic_ytvos",
]

log = logging.getLogger(__name__)

# Bump whenever the generated content changes for the same parameters (an existing folder then no longer matches).
# 2: one no-target expression per video (frames, masks and the target expressions are those of version 1).
FORMAT_VERSION = 2

# Saturated, clearly distinct colours (RGB); the background is dark, so none of them is close to it.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 195, 55),
    "blue": (40, 90, 240),
    "yellow": (240, 220, 35),
    "purple": (170, 55, 220),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
# Half-extent of the shape as a fraction of the frame size (square: half side, circle: radius).
SIZES: dict[str, float] = {"small": 0.09, "big": 0.16}
# (dy, dx) per frame, in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
SPLITS: tuple[str, ...] = ("train", "valid")

_SPEED_RANGE = (0.015, 0.035)  # fraction of the frame size per frame
_TRIANGLE_SCALE = (
    1.2  # a triangle of half-extent r has area 2r^2; scaled so its area is near the square's/circle's
)
_SHORT_CAPTION_P = 0.5  # probability that an object also gets the short expression
_BACKGROUND_NOISE_STD = 6.0
_MIN_VISIBLE_PIXELS = 4  # an object is "visible" in a frame with at least this many pixels
_MIN_FIRST_FRAME_FRACTION = 0.5  # of its full area, visible in frame 0
_MAX_ATTEMPTS = 1000  # rejection sampling of a video's layout


def _long_caption(size: str, colour: str, shape: str, direction: str) -> str:
    return f"the {size} {colour} {shape} moving {direction}"


def _short_caption(colour: str, shape: str) -> str:
    return f"the {colour} {shape}"


def _all_captions() -> list[str]:
    """Every caption the generator can produce (the tokenizer's training corpus)."""
    long = [_long_caption(*c) for c in itertools.product(SIZES, COLOURS, SHAPES, DIRECTIONS)]
    short = [_short_caption(*c) for c in itertools.product(COLOURS, SHAPES)]
    return long + short


# Every word the generator can produce, sorted.
VOCABULARY: tuple[str, ...] = tuple(sorted({w for c in _all_captions() for w in c.split()}))


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic dataset (all of them are recorded in ``synthetic.json``).

    Attributes:
        seed: the content is a function of the seed (and the other fields).
        num_train_videos: videos of the ``train`` split.
        num_valid_videos: videos of the ``valid`` split.
        num_frames: frames per video (named ``00000``, ``00001``, ...).
        image_size: frame height = width in pixels.
        min_objects: fewest objects in a video.
        max_objects: most objects in a video (at most the number of colours - 1: the no-target expression
            names a colour absent from the video).

    Raises:
        ValueError: a field has the wrong type or is out of range.
    """

    seed: int = 0
    num_train_videos: int = 160
    num_valid_videos: int = 24
    num_frames: int = 12
    image_size: int = 64
    min_objects: int = 2
    max_objects: int = 3

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool):
                raise ValueError(f"SyntheticConfig.{f.name} must be an integer, got {value!r}")
            object.__setattr__(self, f.name, int(value))  # numpy / Hydra integers -> int (json, equality)
        minimum = {"seed": 0, "num_train_videos": 1, "num_valid_videos": 1, "num_frames": 2, "image_size": 32}
        minimum |= {"min_objects": 1, "max_objects": 1}
        for name, low in minimum.items():
            if getattr(self, name) < low:
                raise ValueError(f"SyntheticConfig.{name} must be >= {low}, got {getattr(self, name)}")
        if not self.min_objects <= self.max_objects < len(COLOURS):
            raise ValueError(
                f"SyntheticConfig needs 1 <= min_objects <= max_objects <= {len(COLOURS) - 1} (one colour per "
                "object, and one left for the no-target expression),"
                f" got min_objects={self.min_objects}, max_objects={self.max_objects}"
            )


@dataclass(frozen=True)
class _Object:
    colour: str
    shape: str
    size: str
    direction: str
    start: tuple[float, float]  # centre (y, x) in frame 0, pixels
    speed: float  # pixels per frame


def davis_palette() -> list[int]:
    """The DAVIS / PASCAL VOC 256-colour palette as a flat ``[r, g, b, r, g, b, ...]`` list (index 0 black).

    Colour ``i`` spreads the bits of ``i`` over the channels (bit 0 -> red, 1 -> green, 2 -> blue, then the next
    three bits one level lower), so object 1 is dark red, 2 dark green, 3 olive, ...
    """
    palette = []
    for i in range(256):
        rgb = [0, 0, 0]
        for level in range(8):
            for channel in range(3):
                rgb[channel] |= ((i >> (3 * level + channel)) & 1) << (7 - level)
        palette.extend(rgb)
    return palette


def _shape_mask(shape: str, cy: float, cx: float, r: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """bool (S, S): pixels whose centres fall inside the shape centred at (cy, cx) with half-extent r."""
    dy, dx = yy - cy, xx - cx
    if shape == "square":
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if shape == "circle":
        return dy * dy + dx * dx <= r * r
    if shape == "triangle":  # apex up, base at the bottom; its width grows linearly from the apex
        t = _TRIANGLE_SCALE * r
        return (dy <= t) & (np.abs(dx) <= (dy + t) / 2)
    raise AssertionError(f"unknown shape {shape!r}")


def _sample_objects(rng: np.random.Generator, config: SyntheticConfig) -> list[_Object]:
    size = config.image_size
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    objects = []
    for colour in colours:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        size_word = list(SIZES)[int(rng.integers(len(SIZES)))]
        direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
        # Start fully inside the frame (the triangle's apex reaches 1.2 r above its centre).
        extent = SIZES[size_word] * size * (_TRIANGLE_SCALE if shape == "triangle" else 1.0)
        cy, cx = rng.uniform(extent, size - extent, size=2)
        speed = float(rng.uniform(*_SPEED_RANGE)) * size
        objects.append(_Object(str(colour), shape, size_word, direction, (float(cy), float(cx)), speed))
    return objects


def _render_ids(objects: list[_Object], config: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Object-id maps uint8 (T, S, S) (later objects in front) and each object's unoccluded area in frame 0."""
    s, t_count = config.image_size, config.num_frames
    coords = np.arange(s, dtype=np.float32) + 0.5  # pixel centres
    yy, xx = coords[:, None], coords[None, :]
    ids = np.zeros((t_count, s, s), dtype=np.uint8)
    full_area = np.zeros(len(objects), dtype=np.int64)
    for k, obj in enumerate(objects):
        dy, dx = DIRECTIONS[obj.direction]
        r = SIZES[obj.size] * s
        for t in range(t_count):
            cy = obj.start[0] + dy * obj.speed * t
            cx = obj.start[1] + dx * obj.speed * t
            mask = _shape_mask(obj.shape, cy, cx, r, yy, xx)
            if t == 0:
                full_area[k] = int(mask.sum())
            ids[t][mask] = k + 1
    return ids, full_area


def _layout_ok(ids: np.ndarray, full_area: np.ndarray) -> bool:
    t_count = ids.shape[0]
    for k in range(len(full_area)):
        visible = (ids == k + 1).sum(axis=(1, 2))
        if visible[0] < max(_MIN_VISIBLE_PIXELS, _MIN_FIRST_FRAME_FRACTION * full_area[k]):
            return False
        if (visible >= _MIN_VISIBLE_PIXELS).sum() < math.ceil(t_count / 2):
            return False
    return True


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 (S, S, 3): a dark colour with a smooth linear gradient in a random direction."""
    base = rng.uniform(15.0, 60.0, size=3)
    amplitude = rng.uniform(10.0, 25.0, size=3)
    angle = rng.uniform(0.0, 2 * math.pi)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    ramp = math.cos(angle) * coords[None, :] + math.sin(angle) * coords[:, None]  # in [-0.71, 0.71]
    return (base + amplitude * ramp[..., None]).astype(np.float32)


@dataclass(frozen=True)
class _Video:
    objects: list[_Object]
    ids: np.ndarray  # uint8 (T, S, S)
    frames: np.ndarray  # uint8 (T, S, S, 3)
    short_caption: list[bool]  # per object
    no_target_caption: str  # names no object of the video (a colour none of them has)


def _make_video(config: SyntheticConfig, split: str, index: int) -> _Video:
    rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
    for _ in range(_MAX_ATTEMPTS):
        objects = _sample_objects(rng, config)
        ids, full_area = _render_ids(objects, config)
        if _layout_ok(ids, full_area):
            break
    else:
        raise RuntimeError(
            f"synthetic {split} video {index}: no layout with every object visible in frame 0 and in half of the "
            f"frames after {_MAX_ATTEMPTS} attempts ({config}); use fewer objects or a larger image_size"
        )
    s, t_count = config.image_size, config.num_frames
    frames = np.broadcast_to(_background(rng, s), (t_count, s, s, 3)).copy()
    for k, obj in enumerate(objects):
        frames[ids == k + 1] = COLOURS[obj.colour]
    frames += rng.normal(0.0, _BACKGROUND_NOISE_STD, size=frames.shape).astype(np.float32)
    frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    short = [bool(rng.random() < _SHORT_CAPTION_P) for _ in objects]
    # drawn last, so the frames, masks and target expressions stay those of format version 1
    absent = [c for c in COLOURS if c not in {o.colour for o in objects}]
    no_target = _long_caption(
        list(SIZES)[int(rng.integers(len(SIZES)))],
        absent[int(rng.integers(len(absent)))],
        SHAPES[int(rng.integers(len(SHAPES)))],
        list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))],
    )
    return _Video(objects=objects, ids=ids, frames=frames, short_caption=short, no_target_caption=no_target)


def _write_split(out: Path, config: SyntheticConfig, split: str, num_videos: int) -> None:
    names = [f"{t:05d}" for t in range(config.num_frames)]
    palette = davis_palette()
    expressions_json: dict[str, dict] = {}
    meta_json: dict[str, dict] = {}
    for index in range(num_videos):
        vid = f"{split}_{index:04d}"
        video = _make_video(config, split, index)
        frames_dir = out / split / "JPEGImages" / vid
        masks_dir = out / split / "Annotations" / vid
        frames_dir.mkdir(parents=True)
        masks_dir.mkdir(parents=True)
        for t, name in enumerate(names):
            # 4:4:4 chroma: the default 4:2:0 subsampling would smear the colour of small objects at 64 px.
            Image.fromarray(video.frames[t]).save(frames_dir / f"{name}.jpg", quality=95, subsampling=0)
            png = Image.fromarray(video.ids[t])  # mode "L"
            png.putpalette(palette)  # -> mode "P", as the released annotations
            png.save(masks_dir / f"{name}.png")

        expressions: dict[str, dict[str, str]] = {}
        objects_meta: dict[str, dict] = {}
        for k, obj in enumerate(video.objects):
            obj_id = str(k + 1)
            captions = [_long_caption(obj.size, obj.colour, obj.shape, obj.direction)]
            if video.short_caption[k]:
                captions.append(_short_caption(obj.colour, obj.shape))
            for caption in captions:
                expressions[str(len(expressions))] = {"exp": caption, "obj_id": obj_id}
            present = (video.ids == k + 1).any(axis=(1, 2))
            objects_meta[obj_id] = {
                "category": obj.shape,
                "frames": [n for n, p in zip(names, present) if p],
            }
        expressions[str(len(expressions))] = {"exp": video.no_target_caption, "obj_id": []}
        expressions_json[vid] = {"expressions": expressions, "frames": names}
        meta_json[vid] = {"objects": objects_meta}

    exp_path = out / "meta_expressions" / split / "meta_expressions.json"
    exp_path.parent.mkdir(parents=True)
    exp_path.write_text(json.dumps({"videos": expressions_json}, indent=1))
    (out / split / "meta.json").write_text(json.dumps({"videos": meta_json}, indent=1))


def _train_tokenizer() -> bytes:
    """A sentencepiece word model with one piece per word of :data:`VOCABULARY` (no unknown words)."""
    import sentencepiece as spm

    corpus = sorted(_all_captions())

    def sentences() -> Iterator[str]:
        yield from corpus

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences(),
        model_writer=buffer,
        model_type="word",
        vocab_size=len(VOCABULARY) + 3,  # + <unk>, <s>, </s> (ids 0, 1, 2, as the BEiT-3 model)
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    model = buffer.getvalue()
    processor = spm.SentencePieceProcessor(model_proto=model)
    missing = [w for w in VOCABULARY if processor.piece_to_id("\u2581" + w) == processor.unk_id()]
    if missing or processor.get_piece_size() != len(VOCABULARY) + 3:
        raise RuntimeError(
            f"synthetic tokenizer: sentencepiece kept {processor.get_piece_size()} pieces for "
            f"{len(VOCABULARY)} words; missing {missing}"
        )
    return model


def _parameters(config: SyntheticConfig) -> dict[str, object]:
    return {"format_version": FORMAT_VERSION, "config": asdict(config)}


def _is_up_to_date(root: Path, parameters: dict[str, object], overwrite: bool) -> bool:
    """True when ``root`` already holds this dataset; False when it may be (re)generated; raises otherwise."""
    marker = root / "synthetic.json"
    if marker.is_file():
        try:
            found = json.loads(marker.read_text())
            found = {key: found.get(key) for key in parameters}
        except (OSError, ValueError, AttributeError) as err:
            found = {"unreadable": str(err)}
        if found == parameters:
            return True
        older = found.get("format_version")
        if found.get("config") == parameters["config"] and isinstance(older, int) and older < FORMAT_VERSION:
            # this generator's own output from an older format (e.g. before the no-target expressions), same
            # parameters: replaced by the current one, nothing the user chose is lost
            log.info(
                "%s: synthetic dataset of format %d, regenerating as format %d", root, older, FORMAT_VERSION
            )
            return False
        if not overwrite:
            raise DatasetError(
                f"{root}: holds a synthetic dataset generated with other parameters ({marker}: {found}; "
                f"requested: {parameters}). Choose another folder, or pass overwrite=True to replace it"
            )
        return False
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        # Not ours: never written into nor deleted, even with overwrite=True.
        raise DatasetError(
            f"{root}: exists and is not a synthetic dataset (no synthetic.json); refusing to generate into it. "
            "Choose another (new or empty) folder"
        )
    return False


def generate_synthetic_ytvos(
    root: str | Path, config: SyntheticConfig = SyntheticConfig(), overwrite: bool = False
) -> Path:
    """Generates the synthetic dataset under ``root`` unless it is already there with the same parameters.

    The files are written into a temporary sibling folder that is renamed to ``root`` at the end, so an
    interrupted generation leaves nothing at ``root`` (and the temporary folder is removed on any exception).

    Args:
        root: the dataset folder (its parent is created if needed). It must not exist, be empty, or hold a
            synthetic dataset (``synthetic.json``).
        config: the generation parameters.
        overwrite: replace a synthetic dataset at ``root`` generated with other parameters. A folder without
            ``synthetic.json`` is never replaced; one of an older ``FORMAT_VERSION`` with the same parameters
            always is (the demo's data folder follows the generator).

    Returns:
        ``root`` as a Path.

    Raises:
        DatasetError: naming ``root`` when it holds a synthetic dataset with other parameters (and not
            ``overwrite``) or is a non-empty folder that is not a synthetic dataset.
    """
    root = Path(root)
    parameters = _parameters(config)
    if _is_up_to_date(root, parameters, overwrite):
        log.debug("%s: synthetic dataset up to date, generation skipped", root)
        return root

    start = time.perf_counter()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write_split(tmp, config, "train", config.num_train_videos)
        _write_split(tmp, config, "valid", config.num_valid_videos)
        (tmp / "tokenizer.model").write_bytes(_train_tokenizer())
        record = {**parameters, "vocabulary": list(VOCABULARY), "generator": __name__}
        (tmp / "synthetic.json").write_text(json.dumps(record, indent=1))
        _move_into_place(tmp, root, parameters)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "%s: generated the synthetic dataset (%d train + %d valid videos of %d frames) in %.1f s",
        root,
        config.num_train_videos,
        config.num_valid_videos,
        config.num_frames,
        time.perf_counter() - start,
    )
    return root


def _move_into_place(tmp: Path, root: Path, parameters: dict[str, object]) -> None:
    old = None
    if (root / "synthetic.json").is_file():  # overwrite: set the old dataset aside, delete it once replaced
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, old / "dataset")
    try:
        os.replace(tmp, root)  # atomic; also replaces an empty folder
    except OSError:
        # Another process may have generated the same dataset meanwhile (e.g. two ranks): then use theirs.
        if old is not None:
            os.replace(old / "dataset", root)  # put the previous dataset back
            shutil.rmtree(old, ignore_errors=True)
        elif _is_up_to_date(root, parameters, overwrite=False):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
