"""A process's share of a work list (mpgsam2.distributed.shard): round robin, or balanced by cost."""

from __future__ import annotations

import itertools

import pytest

from mpgsam2.distributed import shard


def test_shard_is_round_robin_and_complete() -> None:
    items = list(range(7))
    parts = [shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(itertools.chain(*parts)) == items
    with pytest.raises(ValueError):
        shard(items, 3, 3)


def test_shard_balances_by_cost_and_covers_every_item_once() -> None:
    items = list("abcdefg")
    costs = [1, 50, 2, 2, 30, 30, 1]
    shares = [shard(items, rank, 3, costs) for rank in range(3)]
    assert sorted(x for share in shares for x in share) == items  # each item on exactly one process
    assert all(share == sorted(share, key=items.index) for share in shares)  # in the items' order
    loads = sorted(sum(costs[items.index(x)] for x in share) for share in shares)
    assert loads == [33, 33, 50]  # b alone; e and f apart, the small ones fill in
    assert shard(items, 1, 3) == ["b", "e"]  # without costs: round robin
    with pytest.raises(ValueError, match="2 costs for 7 items"):
        shard(items, 0, 3, [1, 2])
