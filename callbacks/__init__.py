"""Lightning callbacks of the training and evaluation entry points."""

from callbacks.mask_overlay import MaskOverlayLogger, overlay_masks

__all__ = ["MaskOverlayLogger", "overlay_masks"]
