"""The memory bank's index arithmetic without a model: which earlier frames a frame reads, what pruning keeps.

The expected frames are worked out by hand from SAM 2's ``_prepare_memory_conditioned_features`` (frame t
reads t - 1 in the newest slot, then the multiple of ``stride`` at or before t - 2 and every ``stride``-th
frame before it; pointers of t - 1 .. t - (min(T, max_obj_ptrs) - 1)).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from mpgsam2.modeling.sam2.memory_bank import MemoryWindow, TrackingState


def test_memories_read_at_stride_1_are_the_previous_frames() -> None:
    window = MemoryWindow(num_maskmem=7, stride=1)
    # slot 6 (newest) is t - 1 = 9, slot 1 (oldest) is t - 6 = 4
    assert window.memory_frames(10) == [(1, 4), (2, 5), (3, 6), (4, 7), (5, 8), (6, 9)]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        # t - 1, then the even frames at or before t - 2, going back 2 at a time
        (10, [(1, 0), (2, 2), (3, 4), (4, 6), (5, 8), (6, 9)]),
        (11, [(1, 0), (2, 2), (3, 4), (4, 6), (5, 8), (6, 10)]),
    ],
)
def test_memories_read_at_stride_2_skip_the_odd_frames(frame: int, expected: list[tuple[int, int]]) -> None:
    assert MemoryWindow(num_maskmem=7, stride=2).memory_frames(frame) == expected


def test_memories_read_at_stride_3_may_name_frames_before_the_clip() -> None:
    # 9, then 6 (the multiple of 3 at or before 8), 3, 0, -3, -6: the bank holds no negative frame
    assert MemoryWindow(num_maskmem=7, stride=3).memory_frames(10) == [
        (1, -6),
        (2, -3),
        (3, 0),
        (4, 3),
        (5, 6),
        (6, 9),
    ]


def test_smaller_banks_read_fewer_frames() -> None:
    assert MemoryWindow(num_maskmem=1).memory_frames(5) == []  # the conditioning frame only
    assert MemoryWindow(num_maskmem=2, stride=4).memory_frames(5) == [(1, 4)]
    assert MemoryWindow(num_maskmem=3).memory_frames(5) == [(1, 3), (2, 4)]


def test_pointer_window_is_capped_by_the_clip_length() -> None:
    window = MemoryWindow(max_obj_ptrs=4)
    assert window.pointer_window(100) == 4
    assert window.pointer_window(3) == 3
    assert window.pointer_frames(10, num_frames=100) == [(1, 9), (2, 8), (3, 7)]
    assert window.pointer_frames(10, num_frames=3) == [(1, 9), (2, 8)]
    assert window.pointer_frames(2, num_frames=100) == [(1, 1), (2, 0)]  # stops at the clip's start
    assert window.pointer_frames(0, num_frames=100) == []


def _tracked_state(window: MemoryWindow, num_frames: int, last_frame: int, keep_all: bool = False):
    """The state after tracking frames 0 (conditioning) .. last_frame, pruned after each frame."""
    state = TrackingState(num_frames=num_frames, keep_all=keep_all)
    state.cond_frame_idx, state.cond_memory, state.cond_obj_ptr = 0, torch.zeros(1), torch.zeros(1)
    for t in range(1, last_frame + 1):
        state.memories[t] = torch.full((1,), float(t))
        state.obj_ptrs[t] = torch.full((1,), float(t))
        window.prune(state, t)
    return state


def test_pruning_after_frame_20_keeps_the_default_window() -> None:
    window = MemoryWindow(num_maskmem=7, stride=1, max_obj_ptrs=16)
    state = _tracked_state(window, num_frames=100, last_frame=20)
    assert sorted(state.memories) == list(range(15, 21))  # frame 21 reads 15 .. 20
    assert sorted(state.obj_ptrs) == list(range(6, 21))  # frame 21 reads 21 - 15 .. 20
    assert state.cond_memory is not None and state.cond_obj_ptr is not None
    assert state.num_stored_frames() == 16
    assert all(state.memories[t].item() == t for t in state.memories)  # what is kept is not moved


def test_pruning_at_stride_2_keeps_from_the_oldest_frame_read() -> None:
    state = _tracked_state(
        MemoryWindow(num_maskmem=7, stride=2, max_obj_ptrs=4), num_frames=100, last_frame=20
    )
    # frame 21 reads 20, 18, 16, 14, 12, 10; the odd frames in between stay too (only older ones go)
    assert sorted(state.memories) == list(range(10, 21))
    assert sorted(state.obj_ptrs) == [18, 19, 20]


def test_keep_all_prunes_nothing() -> None:
    state = _tracked_state(
        MemoryWindow(num_maskmem=3, max_obj_ptrs=2), num_frames=30, last_frame=25, keep_all=True
    )
    assert sorted(state.memories) == sorted(state.obj_ptrs) == list(range(1, 26))
    assert state.num_stored_frames() == 26


@pytest.mark.parametrize(
    ("num_maskmem", "stride", "max_obj_ptrs"),
    list(itertools.product([2, 3, 7], [1, 2, 3, 5], [2, 4, 16])),
)
def test_pruning_keeps_what_later_frames_read_and_stays_bounded(
    num_maskmem: int, stride: int, max_obj_ptrs: int
) -> None:
    window = MemoryWindow(num_maskmem=num_maskmem, stride=stride, max_obj_ptrs=max_obj_ptrs)
    num_frames = 40
    horizon = num_maskmem * stride + max_obj_ptrs + 2  # later frames past this read nothing of the state's
    for last in range(1, num_frames):
        state = _tracked_state(window, num_frames, last)
        later = range(last + 1, last + 1 + horizon)
        read_memories = {t for f in later for _, t in window.memory_frames(f) if 1 <= t <= last}
        read_pointers = {t for f in later for _, t in window.pointer_frames(f, num_frames) if 1 <= t <= last}
        assert read_memories <= set(state.memories), (last, read_memories - set(state.memories))
        assert read_pointers <= set(state.obj_ptrs), (last, read_pointers - set(state.obj_ptrs))
        # the bank stays flat: a tail of at most (num_maskmem - 2) * stride + 1 memories (the frames between
        # the strided ones stay too), and exactly the pointers the next frame reads
        assert len(state.memories) <= max(1, (num_maskmem - 2) * stride + 1)
        assert set(state.obj_ptrs) == read_pointers
