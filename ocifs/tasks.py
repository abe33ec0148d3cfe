"""Task groups with an owner: structured concurrency for things that outlive one FUSE request.

trio ties every task to a nursery, and a nursery to the task that opened it. A write session's
background part uploads, the read-ahead service and the directory-marker reconciler live longer
than the FUSE request that started them, so each gets its own nursery, opened by a small owner
task in the mount's nursery and closed by its owner's ``close()``: nothing is fire-and-forget,
everything is cancelled at unmount, and a failure inside one group is contained there (its tasks
catch their own errors; see :meth:`TaskGroup.start_soon`).
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

log = logging.getLogger(__name__)
T = TypeVar("T")


async def wait_future(fut: "concurrent.futures.Future[T]", on_cancel: Callable[[], None] | None = None) -> T:
    """Await a future another thread completes (an asyncio loop, a worker pool) without
    blocking a trio thread. Cancelled: the future is cancelled, ``on_cancel`` runs (to stop
    work already under way), and the task does not wait for it."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: object) -> None:
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            pass

    fut.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        fut.cancel()
        if on_cancel is not None:
            on_cancel()
        raise
    return fut.result()


class TaskGroup:
    """A nursery owned by one object (a session, a service) for as long as it is open."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._nursery: trio.Nursery | None = None
        self._closed = trio.Event()
        self._done = trio.Event()

    @classmethod
    async def open(cls, parent: trio.Nursery, name: str) -> "TaskGroup":
        group = cls(name)
        await parent.start(group._run)
        return group

    async def _run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._done.set()

    def start_soon(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``fn(*args)``; an exception it lets escape is logged, never propagated (one
        task's bug must not end the group, let alone the mount)."""
        if self._nursery is None:
            raise RuntimeError(f"task group {self.name} is closed")
        self._nursery.start_soon(self._guard, fn, args)

    async def _guard(self, fn: Callable[..., Awaitable[None]], args: tuple[Any, ...]) -> None:
        try:
            await fn(*args)
        except Exception:
            log.exception("task %s in %s failed", getattr(fn, "__name__", fn), self.name)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Cancel what still runs and end the group (returns at once)."""
        self._closed.set()

    async def aclose(self, timeout: float = 10.0) -> None:
        """Close and wait (bounded) until the group's tasks are gone."""
        self.close()
        with trio.move_on_after(timeout):
            await self._done.wait()
