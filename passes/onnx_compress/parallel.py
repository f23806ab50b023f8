"""Ordered, bounded-lookahead parallel map over threads (numpy releases the GIL in its loops)."""

from __future__ import annotations

__all__ = ["default_workers", "ordered_map"]

import collections
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """CPUs this process may run on (at most 8: beyond that memory bandwidth is the limit)."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))`` in input order, computing at most ``workers + 1`` ahead.

    The bound keeps memory proportional to the number of workers, not to the number of items
    (each result may be a large array). With one worker everything runs in the calling thread.
    """
    workers = workers or default_workers()
    if workers == 1:
        for item in items:
            yield item, fn(item)
        return
    pending: collections.deque[tuple[T, Future[R]]] = collections.deque()
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="onnx-compress") as pool:
        for item in iterator:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) > workers:
                done_item, future = pending.popleft()
                yield done_item, future.result()
        while pending:
            done_item, future = pending.popleft()
            yield done_item, future.result()
