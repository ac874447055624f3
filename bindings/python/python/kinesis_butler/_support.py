"""Helpers the native module calls (not part of the API)."""


def _resolve(future, ok, value):
    """Completes an asyncio future from the loop's thread, unless it was cancelled."""
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class CallHandle:
    """Cancels one running ``async def`` handler call from any thread (a timeout)."""

    def __init__(self):
        self.task = None
        self.loop = None
        self.cancelled = False

    def cancel(self):
        self.cancelled = True
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)


async def run_cancellable(coro, handle):
    """Runs ``coro`` as a task ``handle`` can cancel; returns its result."""
    import asyncio

    handle.loop = asyncio.get_running_loop()
    handle.task = asyncio.ensure_future(coro)
    if handle.cancelled:
        handle.task.cancel()
    return await handle.task
