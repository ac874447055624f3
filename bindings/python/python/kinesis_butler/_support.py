"""Helpers the native module calls (not part of the API)."""


def _resolve(future, ok, value):
    """Completes an asyncio future from the loop's thread, unless it was cancelled."""
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
