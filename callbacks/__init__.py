"""The Lightning layer of the entry points: callbacks, checkpoint IO (``checkpointing``) and the multi-device
strategies (``strategies``)."""

from callbacks.mask_overlay import MaskOverlayLogger, overlay_masks

__all__ = ["MaskOverlayLogger", "overlay_masks"]
