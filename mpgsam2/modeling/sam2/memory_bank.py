"""The memory bank of one tracking run, and which earlier frames a frame reads from it.

SAM 2 conditions frame t on the conditioning frame's memory, on the memories of ``num_maskmem - 1`` earlier
frames (t - 1, then every ``stride``-th frame before it) and on the object pointers of the frames
t - 1 .. t - (W - 1), W = min(T, max_obj_ptrs_in_encoder) (SAM 2's ``_prepare_memory_conditioned_features``).
:class:`MemoryWindow` is that index arithmetic, on frame numbers only; :class:`TrackingState` holds one run's
memories and pointers, and :meth:`MemoryWindow.prune` drops those no later frame can read, so memory stays
flat over long videos. Neither needs a model: the tracker looks its tensors up with the frame numbers given
here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class TrackingState:
    """The memory bank of one tracking run (B clips tracked together).

    num_frames: the clip length T; it sets the pointer window min(T, max_obj_ptrs_in_encoder) as in the
    original. ``cond_*`` hold the conditioning frame; ``memories`` / ``obj_ptrs`` hold later frames (frame
    number -> [B, Cm, E, E] stored memory / [B, C] pointer) and are pruned to what future frames can still
    read.
    maskmem_pos_enc: [B, Cm, E, E] the memory position encoding (the same for every frame, kept once).
    keep_all: never prune; every frame's memory and pointer stays, as in the original video predictor. The
        outputs are the same; the memory grows with the video (set it to measure that, as
        ``benchmarks/streaming_memory.py`` does).
    """

    num_frames: int
    cond_frame_idx: int | None = None
    cond_memory: Tensor | None = None
    cond_obj_ptr: Tensor | None = None
    memories: dict[int, Tensor] = field(default_factory=dict)
    obj_ptrs: dict[int, Tensor] = field(default_factory=dict)
    maskmem_pos_enc: Tensor | None = None
    keep_all: bool = False

    def num_stored_frames(self) -> int:
        """How many frames' memories and pointers the state holds (for memory checks)."""
        return len(set(self.memories) | set(self.obj_ptrs)) + (self.cond_frame_idx is not None)


@dataclass(frozen=True)
class MemoryWindow:
    """Which earlier frames' memories and pointers a frame reads (frame numbers only).

    num_maskmem: memories attended: the conditioning frame's + ``num_maskmem - 1`` earlier frames' (SAM 2's
        ``num_maskmem``).
    stride: the step between the earlier memories older than t - 1 (``memory_temporal_stride_for_eval``).
    max_obj_ptrs: caps the pointer window (``max_obj_ptrs_in_encoder``).
    """

    num_maskmem: int = 7
    stride: int = 1
    max_obj_ptrs: int = 16

    def pointer_window(self, num_frames: int) -> int:
        """W = min(T, max_obj_ptrs): frame t reads the pointers of t - 1 .. t - (W - 1); W - 1 also normalises
        their temporal offsets."""
        return min(num_frames, self.max_obj_ptrs)

    def memory_frames(self, frame_idx: int) -> list[tuple[int, int]]:
        """(t_pos, frame) of the earlier memories frame ``frame_idx`` reads, for t_pos 1 .. num_maskmem - 1.

        t_pos is the memory's temporal slot (``maskmem_tpos_enc[num_maskmem - t_pos - 1]``; 0 is the
        conditioning frame's, not listed): t_pos num_maskmem - 1 is frame t - 1, and each smaller t_pos is
        ``stride`` frames older, counted from the multiple of ``stride`` at or before t - 2. Frames the bank
        does not hold (the conditioning frame, frames before the clip) may be named; reading skips them.
        """
        out = []
        for t_pos in range(1, self.num_maskmem):
            t_rel = self.num_maskmem - t_pos  # how many memory slots back
            if t_rel == 1:
                frame = frame_idx - 1
            else:
                frame = ((frame_idx - 2) // self.stride) * self.stride - (t_rel - 2) * self.stride
            out.append((t_pos, frame))
        return out

    def pointer_frames(self, frame_idx: int, num_frames: int) -> list[tuple[int, int]]:
        """(offset, frame) of the earlier frames whose pointers frame ``frame_idx`` reads: offsets 1 .. W - 1,
        newest first, down to frame 0 (the conditioning frame's pointer is read apart from these)."""
        out = []
        for offset in range(1, self.pointer_window(num_frames)):
            frame = frame_idx - offset
            if frame < 0:
                break
            out.append((offset, frame))
        return out

    def oldest_read(self, next_frame: int, num_frames: int) -> tuple[int, int]:
        """The oldest frame whose memory, and whose pointer, frame ``next_frame`` or any later frame reads.

        Both windows only move forward with the frame, so ``next_frame``'s oldest frames bound every later
        one's.
        """
        oldest_memory = min(
            next_frame - 1,
            ((next_frame - 2) // self.stride) * self.stride - (self.num_maskmem - 3) * self.stride,
        )
        oldest_pointer = next_frame - (self.pointer_window(num_frames) - 1)
        return oldest_memory, oldest_pointer

    def prune(self, state: TrackingState, last_frame: int) -> None:
        """Drop the memories and pointers older than any frame after ``last_frame`` reads (none if
        ``keep_all``)."""
        if state.keep_all:
            return
        oldest_memory, oldest_pointer = self.oldest_read(last_frame + 1, state.num_frames)
        for t in [t for t in state.memories if t < oldest_memory]:
            del state.memories[t]
        for t in [t for t in state.obj_ptrs if t < oldest_pointer]:
            del state.obj_ptrs[t]
