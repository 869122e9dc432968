"""Clip transforms: augmentation, the SAM 2 and BEiT-3 views, mask resizing (spec §1.1, §2.4).

Original: ``datasets/transforms_video.py`` (train) and the torchvision pipelines of ``inference_ytvos.py``.

Training pipeline of one clip, with ONE set of random draws for the whole clip:

1. horizontal flip (p = ``hflip_p``, with albumentations on the whole clip), swapping "left"/"right" in the
   caption;
2. SSD photometric distortion (brightness, contrast before or after the HSV stage, saturation, hue, channel
   permutation; each p = 0.5), values clipped to [0, 255];
3. both views from the augmented frames: bilinear resize to ``sam_size``² and ``beit_size``² (aspect ratio not
   kept), scaled to [0, 1] and normalised with ImageNet mean/std (both views, spec §1.1);
4. masks: nearest-neighbour resize to ``sam_size``², then > 0.5.

deviation: the original flips and distorts only the SAM view; the BEiT view comes from the raw frames
(spec §8.1). Here both views see the same augmented frames.
deviation: the original draws the photometric parameters per frame and lets uint8 values wrap around
(spec §8.12); here they are drawn once per clip and values are clipped.

Evaluation (``train=False``): resize and normalise only.

Implementation notes. Images are resized with PIL's bilinear filter (parity: the original's torchvision
``Resize`` on PIL images is exactly this call, antialiased when shrinking; OpenCV / albumentations' bilinear
resize does not antialias and would feed the model differently filtered 224² views). Masks use torch's
``nearest`` mode as the original. The photometric stage works on the whole (T, H, W, 3) clip at once, with
OpenCV's float RGB <-> HSV conversion as the original (opencv-python-headless, albumentations' dependency).

Randomness: pass ``rng`` (a ``numpy.random.Generator`` or an int seed) to :meth:`ClipTransform.__call__` for
reproducible output; :class:`~mpgsam2.data.video_dataset.ReferringClipDataset` does so, deriving it from
(seed, epoch, index). With ``rng=None`` the draws come from a generator seeded from numpy's global RNG, so
``np.random.seed`` (e.g. Lightning's ``seed_everything(workers=True)``) makes them reproducible too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClipAugmentation",
    "ClipTransform",
    "PhotometricParams",
    "caption_flip",
    "photometric_distort",
    "resize_masks",
    "sample_photometric",
    "to_normalized_view",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# SSD photometric ranges (spec §2.4).
_BRIGHTNESS_DELTA = 32.0
_CONTRAST_RANGE = (0.5, 1.5)
_SATURATION_RANGE = (0.5, 1.5)
_HUE_DELTA = 18.0  # degrees
_CHANNEL_PERMS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))

# "left"/"right" as whole words, also in the compounds of referring expressions ("leftmost", "right-hand" is
# already two words). deviation: the original replaces substrings, turning "bright" into "bleft".
# The geometric augmentation, applied to all frames and masks of a clip at once (albumentations' `images` /
# `masks` targets share one set of parameters); the draw itself is made by ClipTransform.sample.
_CLIP_HFLIP = A.Compose([A.HorizontalFlip(p=1.0)])

_FLIP_RE = re.compile(r"\b(left|right)(most|ward|wards|hand|handed|side)?\b", re.IGNORECASE)


def caption_flip(caption: str) -> str:
    """Swaps the words "left" and "right" (also "leftmost", "rightward", ...) for a horizontally flipped image.

    Case-insensitive; the case pattern of each word is kept ("Left" -> "Right", "LEFT" -> "RIGHT"); the rest of
    the text is unchanged. Words merely containing the letters ("bright", "leftover") are not touched.
    """

    def swap(match: re.Match[str]) -> str:
        word = match.group(1)
        new = "right" if word.lower() == "left" else "left"
        if word.isupper():
            new = new.upper()
        elif word[0].isupper():
            new = new.capitalize()
        return new + (match.group(2) or "")

    return _FLIP_RE.sub(swap, caption)


@dataclass(frozen=True)
class PhotometricParams:
    """One draw of the SSD photometric distortion; ``None`` = that step is not applied.

    Attributes:
        brightness: added to every channel, in [-32, 32].
        contrast: multiplies the image, in [0.5, 1.5].
        contrast_first: contrast before the HSV stage (else after it).
        saturation: multiplies S, in [0.5, 1.5].
        hue: added to H in degrees, in [-18, 18] (wrapped to [0, 360)).
        channel_perm: a permutation of the RGB channels.
    """

    brightness: float | None = None
    contrast: float | None = None
    contrast_first: bool = True
    saturation: float | None = None
    hue: float | None = None
    channel_perm: tuple[int, int, int] | None = None


def sample_photometric(rng: np.random.Generator) -> PhotometricParams:
    """Draws the photometric parameters of one clip (every step with p = 0.5, as the SSD distortion)."""

    def coin() -> bool:
        return bool(rng.integers(2))

    brightness = float(rng.uniform(-_BRIGHTNESS_DELTA, _BRIGHTNESS_DELTA)) if coin() else None
    contrast_first = coin()
    contrast = float(rng.uniform(*_CONTRAST_RANGE)) if coin() else None
    saturation = float(rng.uniform(*_SATURATION_RANGE)) if coin() else None
    hue = float(rng.uniform(-_HUE_DELTA, _HUE_DELTA)) if coin() else None
    perm = _CHANNEL_PERMS[int(rng.integers(len(_CHANNEL_PERMS)))] if coin() else None
    return PhotometricParams(brightness, contrast, contrast_first, saturation, hue, perm)


def photometric_distort(frames: np.ndarray, params: PhotometricParams) -> np.ndarray:
    """Applies one photometric draw identically to every frame.

    Args:
        frames: uint8 (T, H, W, 3) RGB.
        params: the draw.

    Returns:
        uint8 (T, H, W, 3). Each step's result is clipped to the valid range (deviation: the original lets uint8
        values wrap around, spec §8.12) and the final values are rounded.
    """
    x = frames.astype(np.float32)
    if params.brightness is not None:
        x = np.clip(x + params.brightness, 0.0, 255.0)
    if params.contrast is not None and params.contrast_first:
        x = np.clip(x * params.contrast, 0.0, 255.0)
    if params.saturation is not None or params.hue is not None:
        # parity note: the original converts RGB data with OpenCV's BGR2HSV, i.e. H is measured on a mirrored
        # hue circle; with a hue shift symmetric around 0 the distribution of results is the same.
        # OpenCV's float HSV: H in degrees [0, 360), S in [0, 1], V = max(R, G, B). cvtColor takes 2-D images, so
        # the clip is viewed as one (T * H, W) image (the conversion is per pixel).
        t, h, w, _ = x.shape
        hsv = cv2.cvtColor(np.ascontiguousarray(x).reshape(t * h, w, 3), cv2.COLOR_RGB2HSV)
        if params.saturation is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * params.saturation, 0.0, 1.0)
        if params.hue is not None:
            hsv[..., 0] = np.mod(hsv[..., 0] + params.hue, 360.0)
        x = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(t, h, w, 3), 0.0, 255.0)
    if params.contrast is not None and not params.contrast_first:
        x = np.clip(x * params.contrast, 0.0, 255.0)
    if params.channel_perm is not None:
        x = x[..., list(params.channel_perm)]
    return np.rint(x).astype(np.uint8)


def to_normalized_view(frames: np.ndarray, size: int) -> Tensor:
    """One model view of a clip: bilinear resize to size², [0, 1], ImageNet normalisation.

    Args:
        frames: uint8 (T, H, W, 3) RGB.
        size: the square output side.

    Returns:
        float32 (T, 3, size, size).
    """
    return normalize_view(resized_view(frames, size))


def resized_view(frames: np.ndarray, size: int) -> Tensor:
    """uint8 (T, 3, size, size): the frames bilinearly resized, before normalisation (a quarter of the float
    view's memory; :func:`normalize_view` finishes it exactly)."""
    resized = np.stack(
        [np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BILINEAR)) for f in frames]
    )
    return torch.from_numpy(np.ascontiguousarray(resized.transpose(0, 3, 1, 2)))


def normalize_view(resized: Tensor) -> Tensor:
    """float32 (..., 3, S, S) from a uint8 :func:`resized_view`: [0, 1], then ImageNet normalisation."""
    # one float conversion and two in-place ops: (x / 255 - mean) / std == (x - 255 mean) * (1 / (255 std))
    out = resized.float()
    mean = torch.tensor(IMAGENET_MEAN, device=out.device).view(3, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(IMAGENET_STD, device=out.device).view(3, 1, 1) * 255.0)
    return out.sub_(mean).mul_(inv_std)


class NormalizedFrames(Sequence[Tensor]):
    """A model view of a video held as uint8 (T, 3, S, S) and normalised frame by frame when read: the lazy
    frame sequence ``mpgsam2.inference.predict_video`` accepts, at a quarter of the float view's memory.

    Item t is float32 (3, S, S), equal to ``to_normalized_view(frames, S)[t]``.
    """

    def __init__(self, resized: Tensor) -> None:
        if resized.dtype != torch.uint8 or resized.ndim != 4:
            raise ValueError(f"expected uint8 (T, 3, S, S), got {resized.dtype} {tuple(resized.shape)}")
        self.resized = resized

    def __len__(self) -> int:
        return int(self.resized.shape[0])

    def __getitem__(self, t: int | slice) -> Tensor:  # type: ignore[override]
        """Frame t as (3, S, S), or the frames of a slice as (n, 3, S, S)."""
        return normalize_view(self.resized[t])

    def to(self, device: torch.device | str) -> NormalizedFrames:
        """The same view with its uint8 frames on ``device``."""
        return NormalizedFrames(self.resized.to(device))


def resize_masks(masks: np.ndarray, size: int) -> Tensor:
    """Masks to size²: nearest neighbour then > 0.5 (parity: the original's ``interpolate(..., "nearest")``).

    Args:
        masks: bool (T, H, W).

    Returns:
        float32 (T, size, size) with values 0/1.
    """
    m = torch.from_numpy(np.ascontiguousarray(masks)).float()[:, None]
    return (F.interpolate(m, size=(size, size), mode="nearest")[:, 0] > 0.5).float()


@dataclass(frozen=True)
class ClipAugmentation:
    """The random draws of one clip: whether it is flipped, and the photometric draw (None = none)."""

    hflip: bool = False
    photometric: PhotometricParams | None = None


class ClipTransform:
    """Turns a clip into the model's two views and its target (spec §1.1, §2.4; module docstring for details).

    Args:
        sam_size: side of the SAM 2 view and of the masks (1024 for the released models).
        beit_size: side of the BEiT-3 view (224).
        train: augment (flip, photometric) when True; resize and normalise only when False.
        hflip_p: probability of the horizontal flip (train only).
        photometric: apply the SSD photometric distortion (train only).
    """

    def __init__(
        self, sam_size: int, beit_size: int, train: bool, hflip_p: float = 0.5, photometric: bool = True
    ) -> None:
        if sam_size < 1 or beit_size < 1:
            raise ValueError(f"view sizes must be positive, got sam_size={sam_size}, beit_size={beit_size}")
        if not 0.0 <= hflip_p <= 1.0:
            raise ValueError(f"hflip_p must be in [0, 1], got {hflip_p}")
        self.sam_size = sam_size
        self.beit_size = beit_size
        self.train = train
        self.hflip_p = hflip_p
        self.photometric = photometric

    def __repr__(self) -> str:
        return (
            f"ClipTransform(sam_size={self.sam_size}, beit_size={self.beit_size}, train={self.train}, "
            f"hflip_p={self.hflip_p}, photometric={self.photometric})"
        )

    def sample(self, rng: np.random.Generator) -> ClipAugmentation:
        """Draws the augmentation of one clip (nothing when ``train`` is False)."""
        if not self.train:
            return ClipAugmentation()
        hflip = bool(rng.random() < self.hflip_p)
        return ClipAugmentation(
            hflip=hflip, photometric=sample_photometric(rng) if self.photometric else None
        )

    def __call__(
        self,
        frames: np.ndarray,
        masks: np.ndarray | None,
        caption: str,
        rng: np.random.Generator | int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None, str]:
        """Augments (train) and converts a clip.

        Args:
            frames: uint8 (T, H, W, 3) RGB.
            masks: bool (T, H, W) target, or None.
            caption: the expression (flipped with the frames).
            rng: a generator or int seed for the draws; None draws a seed from numpy's global RNG.

        Returns:
            sam_frames: float32 (T, 3, sam_size, sam_size), normalised.
            beit_frames: float32 (T, 3, beit_size, beit_size), normalised, same geometry as ``sam_frames``.
            masks: float32 (T, sam_size, sam_size) 0/1, or None when ``masks`` is None.
            caption: after the flip's left/right swap.
        """
        if not self.train:
            return self.apply(frames, masks, caption, ClipAugmentation())  # draws nothing, from no RNG
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(np.random.randint(2**31) if rng is None else rng)
        return self.apply(frames, masks, caption, self.sample(rng))

    def apply(
        self, frames: np.ndarray, masks: np.ndarray | None, caption: str, aug: ClipAugmentation
    ) -> tuple[Tensor, Tensor, Tensor | None, str]:
        """:meth:`__call__` with given draws (e.g. to apply one augmentation to several inputs)."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        if masks is not None and masks.shape != frames.shape[:3]:
            raise ValueError(f"masks {tuple(masks.shape)} do not match frames {tuple(frames.shape)}")
        if aug.hflip:
            # one albumentations call on the whole clip: the same flip for every frame and mask
            targets = (
                {"images": frames} if masks is None else {"images": frames, "masks": masks.view(np.uint8)}
            )
            flipped = _CLIP_HFLIP(**targets)
            frames = flipped["images"]
            masks = flipped["masks"].astype(bool) if masks is not None else None
            caption = caption_flip(caption)
        if aug.photometric is not None:
            frames = photometric_distort(frames, aug.photometric)
        frames = np.ascontiguousarray(frames)
        sam = to_normalized_view(frames, self.sam_size)
        beit = to_normalized_view(frames, self.beit_size)
        out_masks = resize_masks(masks, self.sam_size) if masks is not None else None
        return sam, beit, out_masks, caption

    def held_views(self, frames: np.ndarray) -> tuple[NormalizedFrames, NormalizedFrames]:
        """The evaluation views of ``frames`` (uint8 (T, H, W, 3)) held as uint8 and normalised when read: the
        frames of :meth:`__call__` (``train=False``) at a quarter of the memory."""
        if self.train:
            raise ValueError("held_views is the evaluation transform (train=False)")
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        return (
            NormalizedFrames(resized_view(frames, self.sam_size)),
            NormalizedFrames(resized_view(frames, self.beit_size)),
        )
