"""Data parallelism for inference: under `accelerate launch` / `torchrun` each process takes a share
of the items and every process gets all results back, in order; alone, it is a plain call."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from kpod.placement import process_state

__all__ = ["map_across_processes", "process_state"]

Item = TypeVar("Item")
Result = TypeVar("Result")


def map_across_processes(state, run: Callable[[list[Item]], list[Result]], items: list[Item]) -> list[Result]:
    """run(this process's share of items) -> one result per item; returns the results of all items."""
    from accelerate.utils import gather_object

    with state.split_between_processes(list(range(len(items)))) as mine:
        local = list(zip(mine, run([items[i] for i in mine])))
    by_index = dict(gather_object(local) if state.num_processes > 1 else local)
    return [by_index[i] for i in range(len(items))]
