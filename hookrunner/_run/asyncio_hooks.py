"""Hooks of plugins that use asyncio libraries: a plugin sets ``HOOKRUNNER_ASYNCIO = True`` and its coroutines run
on an asyncio loop; every other plugin stays on trio.

hookrunner runs on trio, where ``asyncio.sleep``, aiohttp or an SDK's asyncio client fail (``RuntimeError: no
running event loop``). trio-asyncio is the well-kept bridge: ``trio_asyncio.open_loop()`` runs an asyncio loop
inside the trio run, and ``trio_asyncio.aio_as_trio(fn)(*args)`` runs ``fn`` as an asyncio task on it while the
calling trio task waits. A trio cancel scope around that wait cancels the asyncio task, so ``runner.hook_timeout``
and a stop reach such a hook as they reach any other.

The loop is opened only when some active plugin asks for it, and trio-asyncio is only imported then: importing it
patches asyncio's loop lookup for the whole process, which plugins that do not ask should not pay for.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import sniffio
import trio

from hookrunner._core.text import one_line

if TYPE_CHECKING:
    import httpx

__all__ = ["FLAG", "asyncio_loop", "on_asyncio", "call_on_asyncio", "asyncio_hint", "refuse_asyncio_callers"]

log = logging.getLogger("hookrunner.asyncio")

#: What a plugin (or the module its class is defined in) sets to True to have its coroutines run on asyncio; the
#: loader reads it (``plugins.asks_for_asyncio``).
FLAG = "HOOKRUNNER_ASYNCIO"

#: Seconds the asyncio tasks plugins left running get to end, once cancelled, when the run ends.
LEFT_TASKS_GRACE = 1.0

F = TypeVar("F", bound=Callable[..., Any])


@asynccontextmanager
async def asyncio_loop(needed: bool) -> AsyncIterator[None]:
    """One asyncio loop for the ``async with`` block of a trio run, when ``needed``; nothing otherwise.

    What asyncio would only log (a task's exception nobody retrieved, an unclosed aiohttp session) is logged here
    too: trio-asyncio's own handler raises it into the loop, which would end the whole run for one plugin's slip.
    Leaving the block cancels the asyncio tasks plugins left running (``asyncio.create_task`` never awaited), as
    ``asyncio.run`` does, and gives them ``LEFT_TASKS_GRACE`` seconds to end; what they raise is logged.
    """
    if not needed:
        yield
        return
    import trio_asyncio  # (here, not at the top: the import patches asyncio for the whole process)

    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_asyncio_error)
        try:
            yield
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + LEFT_TASKS_GRACE):
                await trio_asyncio.aio_as_trio(_end_left_tasks)()


async def _end_left_tasks() -> None:
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current]
    for task in left:
        task.cancel()
    results = await asyncio.gather(*left, return_exceptions=True)
    for task, result in zip(left, results):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            log.error(
                "asyncio: %s, left running at the end of the run, raised %s when cancelled: %s",
                _task_name(task),
                type(result).__name__,
                one_line(str(result), 500),
            )
            log.debug("asyncio: traceback", exc_info=result)


def _log_asyncio_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: one line (the traceback at debug), never an exception into the run."""
    message = one_line(str(context.get("message") or "unhandled error in the asyncio loop"), 300)
    future = context.get("task") or context.get("future")
    where = f" ({_task_name(future)})" if future is not None else ""
    exc = context.get("exception")
    if exc is None:
        log.error("asyncio: %s%s", message, where)
        return
    log.error("asyncio: %s%s: %s: %s", message, where, type(exc).__name__, one_line(str(exc), 500))
    log.debug("asyncio: traceback", exc_info=exc)


def _task_name(future: Any) -> str:
    coro = future.get_coro() if isinstance(future, asyncio.Task) else None
    if coro is None:
        return one_line(repr(future), 200)
    return f"task {future.get_name()} of {getattr(coro, '__qualname__', type(coro).__name__)}"


async def refuse_asyncio_callers(request: httpx.Request) -> None:
    """A request hook of ``app.http`` (a trio client, shared by every plugin) while an asyncio loop is open: a call
    from asyncio code would leave its connection pool broken for every plugin; this refuses it first, saying how."""
    if sniffio.current_async_library() == "asyncio":
        raise RuntimeError(
            "app.http is a trio client: from a HOOKRUNNER_ASYNCIO hook call it as "
            "`await trio_asyncio.trio_as_aio(app.http.post)(url, ...)`, or use an asyncio client (aiohttp)"
        )


def on_asyncio(function: F) -> F:
    """``function``, a coroutine function, made to run as an asyncio task of the run's loop each time it is awaited
    (from trio). Its name stays, for log lines and task names."""
    import trio_asyncio

    bridged = trio_asyncio.aio_as_trio(function)

    @functools.wraps(function)
    async def run(*args: Any, **kwargs: Any) -> Any:
        return await bridged(*args, **kwargs)

    return run  # type: ignore[return-value]


def call_on_asyncio(function: Callable[..., Any], args: Sequence[Any]) -> Any:
    """Call a hook implementation of an asyncio plugin; what it gives is awaited from trio as usual. An ``async def``
    becomes an asyncio task (so even the code before its first ``await`` runs where asyncio works); a plain function
    is called here, as for any plugin, and an awaitable it returns is awaited on the loop."""
    if inspect.iscoroutinefunction(function):
        return on_asyncio(function)(*args)
    result = function(*args)
    if inspect.isawaitable(result):
        import trio_asyncio

        return trio_asyncio.aio_as_trio(result)
    return result


def asyncio_hint(exc: BaseException) -> str:
    """What to add to the log line of a plugin's exception that comes from asyncio code run on trio (asyncio found no
    loop, sniffio no library, or trio was handed an asyncio future); ``""`` for any other exception."""
    used_asyncio = (
        isinstance(exc, sniffio.AsyncLibraryNotFoundError)
        or (isinstance(exc, RuntimeError) and "no running event loop" in str(exc))
        # trio's words for an asyncio future, when another plugin's asyncio loop is open
        or (isinstance(exc, TypeError) and "unrecognized yield message" in str(exc))
    )
    if not used_asyncio:
        return ""
    return (
        f"; hooks run on trio: a plugin that uses asyncio libraries sets {FLAG} = True in its module "
        '(docs/writing-plugins.md, "Using asyncio libraries")'
    )
