"""Calling hook implementations one at a time, each behind its own timeout and exception boundary.

``pm.hook.x(...)`` would stop at the first exception and cannot await; so the implementations are iterated
here in the order pluggy would call them (last registered first, ``tryfirst``/``trylast`` respected), each
called with the subset of arguments it asks for, and awaited when it returns an awaitable (datasette's
``await_me_maybe`` pattern). The coroutines of a plugin that sets ``HOOKRUNNER_ASYNCIO = True`` are awaited on the
run's asyncio loop (``asyncio_hooks.py``), behind the same timeout and boundary.

Anything a plugin raises is that plugin's failure, ``BaseException`` included (``sys.exit()`` in a hook, a
``KeyboardInterrupt`` raised by hand): it is counted and logged, and the runner goes on. Only trio's own
cancellation passes through, since it is how the runner stops and times out hooks.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pluggy
import trio

from hookrunner._core.events import EVENT_CLASSES, Event
from hookrunner._core.failures import is_cancellation
from hookrunner._core.logs import log_fields
from hookrunner._core.stats import Stats
from hookrunner._core.text import one_line
from hookrunner._core.triggers import type_selected
from hookrunner._run.asyncio_hooks import asyncio_hint, call_on_asyncio

log = logging.getLogger("hookrunner.dispatch")

KwargsFor = Mapping[str, Any] | Callable[[str], Mapping[str, Any]]

#: The hooks an event reaches: its own type's, and ``on_event``.
EVENT_HOOKS = frozenset({cls.HOOK for cls in EVENT_CLASSES.values() if cls.HOOK is not None} | {"on_event"})
#: How many event types keep a worked-out dispatch plan.
MAX_PLANS = 256


class PendingHooks:
    """The rest of one event's dispatch plan, from the implementation that returned an awaitable: await it to
    finish the event; ``close`` it to drop it unawaited (the event is kept to be dispatched again, whole) without
    the plugin's coroutine, which never ran, warning that it was never awaited."""

    __slots__ = ("_finish", "_result", "_args")

    def __init__(self, finish: Callable[..., Awaitable[None]], result: Awaitable[Any], args: tuple[Any, ...]) -> None:
        self._finish, self._result, self._args = finish, result, args

    def __await__(self) -> Generator[Any, None, None]:
        return self._finish(*self._args).__await__()

    def close(self) -> None:
        if inspect.iscoroutine(self._result):
            self._result.close()


@dataclass(frozen=True)
class HookFailure:
    """One hook implementation that raised: which plugin, which hook, on which call and event, and what."""

    plugin: str
    hook: str
    call_id: str | None
    event_id: str | None
    exception: BaseException


class HookDispatcher:
    """Calls one hook on every plugin, isolated; counts and logs failures with plugin, call and event."""

    def __init__(
        self, pm: pluggy.PluginManager, hook_timeout: float, stats: Stats, asyncio_plugins: Collection[str] = ()
    ) -> None:
        self._pm = pm
        self.hook_timeout = hook_timeout
        self._stats = stats
        #: Plugins that set ``HOOKRUNNER_ASYNCIO = True``: their coroutines run on the run's asyncio loop, which
        #: must be open (``asyncio_hooks.asyncio_loop``) while they are called.
        self.asyncio_plugins = frozenset(asyncio_plugins)
        self._impls: dict[str, list[pluggy.HookImpl]] = {}
        #: Per event type (bounded: a stream of made-up types plans each event anew past the bound).
        self._event_plans: dict[str, tuple[_Planned, ...]] = {}
        #: (plugin, event hook) -> the event types it asked for (``App.select_events``); absent: every one.
        self._selections: dict[tuple[str, str], tuple[str, ...]] = {}
        #: ``observe(plugin, hook, seconds)`` for every implementation that returned (the metrics' histogram).
        self.observe: Callable[[str, str, float], None] | None = None
        #: ``on_error(failure)`` for every implementation that raised (``hookrunner.testing`` keeps them).
        self.on_error: Callable[[HookFailure], None] | None = None

    def implementations(self, hook_name: str) -> list[pluggy.HookImpl]:
        """The implementations of ``hook_name`` in calling order (cached: plugins are fixed once running)."""
        impls = self._impls.get(hook_name)
        if impls is None:
            caller = getattr(self._pm.hook, hook_name)
            impls = list(reversed(caller.get_hookimpls()))
            self._impls[hook_name] = impls
        return impls

    async def call(
        self,
        hook_name: str,
        kwargs: KwargsFor,
        *,
        call_id: str | None = None,
        event_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Call every implementation of ``hook_name`` in turn; never raises for a plugin's failure.

        ``kwargs`` may be a function of the plugin name, for hooks whose argument differs per plugin (``app``).
        """
        limit = self.hook_timeout if timeout is None else timeout
        for impl in self.implementations(hook_name):
            given = kwargs(impl.plugin_name) if callable(kwargs) else kwargs
            plugin = impl.plugin_name
            started = time.monotonic()
            try:
                args = [given[name] for name in impl.argnames]
                if plugin in self.asyncio_plugins:
                    result = call_on_asyncio(impl.function, args)
                else:
                    result = impl.function(*args)
            except BaseException as exc:
                if is_cancellation(exc):
                    raise
                self._failed(plugin, hook_name, call_id, event_id, exc)
                continue
            if result is not None and inspect.isawaitable(result):
                await self._await_result(result, started, plugin, hook_name, limit, call_id, event_id)
            else:
                self._returned(time.monotonic() - started, plugin, hook_name, limit, call_id, event_id)

    def dispatch_event(self, event: Event, call: Any) -> PendingHooks | None:
        """Start the event's own hook (``on_user_transcription``, ...) then ``on_event``, on every plugin that
        implements them (and selected the event's type): None when each was a plain function that returned, else an
        awaitable that finishes the event from the first implementation that returned one, to be awaited before
        the call's next event.

        This is the hot path, so the implementations, the arguments each takes and where its coroutines run are
        worked out once per event type, and plain functions cost no coroutine (one for each event would be a
        third of dispatch) and one clock reading each: where one implementation ends, the next starts.
        """
        plan = self._event_plans.get(event.event_type)
        if plan is None:
            plan = self._plan_for(type(event), event.event_type)
            if len(self._event_plans) < MAX_PLANS:
                self._event_plans[event.event_type] = plan
        return self._run_plan(plan, 0, event, call) if plan else None

    def _run_plan(self, plan: tuple[_Planned, ...], start: int, event: Event, call: Any) -> PendingHooks | None:
        limit = self.hook_timeout
        started = time.monotonic()
        for position in range(start, len(plan)):
            function, plugin, hook_name, takes = plan[position]
            try:
                if takes is _BOTH:
                    result = function(event, call)
                elif takes is _EVENT:
                    result = function(event)
                else:
                    result = function(*[{"event": event, "call": call}[name] for name in takes])
            except BaseException as exc:
                if is_cancellation(exc):
                    raise
                self._failed(plugin, hook_name, call.id, event.event_id, exc)
                started = time.monotonic()
                continue
            if result is not None and inspect.isawaitable(result):
                return PendingHooks(self._finish_plan, result, (result, started, plan, position, event, call))
            now = time.monotonic()
            self._returned(now - started, plugin, hook_name, limit, call.id, event.event_id)
            started = now
        return None

    async def _finish_plan(
        self, result: Awaitable[Any], started: float, plan: tuple[_Planned, ...], position: int, event: Event, call: Any
    ) -> None:
        """Await what the implementation at ``position`` returned, then run the rest of the plan."""
        _, plugin, hook_name, _ = plan[position]
        await self._await_result(result, started, plugin, hook_name, self.hook_timeout, call.id, event.event_id)
        rest = self._run_plan(plan, position + 1, event, call)
        if rest is not None:
            await rest

    def select_events(self, plugin: str, hook_name: str, patterns: Iterable[str] | None) -> None:
        """From now on, call ``plugin``'s ``hook_name`` (an event hook) only for events whose type one of
        ``patterns`` picks (globs, as a notifier's ``events``); ``None``: for every event again."""
        if hook_name not in EVENT_HOOKS:
            raise ValueError(f"{hook_name!r} is not an event hook (one of: {', '.join(sorted(EVENT_HOOKS))})")
        if patterns is None:
            self._selections.pop((plugin, hook_name), None)
        else:
            if isinstance(patterns, str):
                raise TypeError("event_types: a list of event types or globs, not one string")
            self._selections[(plugin, hook_name)] = tuple(patterns)
        self._event_plans.clear()

    def _plan_for(self, cls: type[Event], event_type: str) -> tuple[_Planned, ...]:
        hooks = ([cls.HOOK] if cls.HOOK is not None else []) + ["on_event"]
        plan = []
        for hook_name in hooks:
            for impl in self.implementations(hook_name):
                selection = self._selections.get((impl.plugin_name, hook_name))
                if selection is not None and not type_selected(event_type, selection):
                    continue
                function = impl.function
                if impl.plugin_name in self.asyncio_plugins:
                    function = functools.partial(_on_asyncio, impl.function)
                takes = tuple(impl.argnames)
                plan.append((function, impl.plugin_name, hook_name, _TAKES.get(takes, takes)))
        return tuple(plan)

    async def _await_result(
        self,
        result: Any,
        started: float,
        plugin: str,
        hook_name: str,
        limit: float,
        call_id: str | None,
        event_id: str | None,
    ) -> None:
        """Await what an implementation returned, within ``limit``; only awaiting can be interrupted, so only it
        pays for a cancel scope (a few µs per hook)."""
        try:
            with trio.move_on_after(limit) as scope:
                await result
        except BaseException as exc:
            if is_cancellation(exc):
                raise
            self._failed(plugin, hook_name, call_id, event_id, exc)
            return
        if scope.cancelled_caught:
            self._stats.hook_timeouts[plugin] += 1
            log.error(
                "%s timed out after %.3g s (runner.hook_timeout); the runner moved on",
                _where(plugin, hook_name, call_id, event_id),
                limit,
                extra=log_fields(plugin=plugin, hook=hook_name, call_id=call_id, event_id=event_id),
            )
            return
        if self.observe is not None:
            self.observe(plugin, hook_name, time.monotonic() - started)

    def _returned(
        self, elapsed: float, plugin: str, hook_name: str, limit: float, call_id: str | None, event_id: str | None
    ) -> None:
        """A plain function returned after ``elapsed`` seconds: observed, and flagged when it held the loop."""
        if self.observe is not None:
            self.observe(plugin, hook_name, elapsed)
        if elapsed > limit:
            # A plain function cannot be interrupted: it held the event loop (every call) this long.
            self._stats.hook_timeouts[plugin] += 1
            log.error(
                "%s blocked the event loop for %.3g s (runner.hook_timeout is %.3g s); make it async "
                "or move the blocking work to trio.to_thread.run_sync",
                _where(plugin, hook_name, call_id, event_id),
                elapsed,
                limit,
                extra=log_fields(plugin=plugin, hook=hook_name, call_id=call_id, event_id=event_id),
            )

    def _failed(self, plugin: str, hook_name: str, call_id: str | None, event_id: str | None, exc: BaseException) -> None:
        self._stats.hook_errors[plugin] += 1
        where = _where(plugin, hook_name, call_id, event_id)
        fields = log_fields(plugin=plugin, hook=hook_name, call_id=call_id, event_id=event_id)
        log.error(
            "%s raised %s: %s%s%s",
            where,
            type(exc).__name__,
            one_line(str(exc), 500),
            _origin(exc),
            asyncio_hint(exc),
            extra=fields,
        )
        log.debug("%s: traceback", where, exc_info=exc, extra=fields)
        if self.on_error is not None:
            self.on_error(HookFailure(plugin, hook_name, call_id, event_id, exc))


#: The argument lists most event hooks take, as constants that ``dispatch_event`` tells apart by identity.
_BOTH, _EVENT = ("event", "call"), ("event",)
_TAKES = {_BOTH: _BOTH, _EVENT: _EVENT}
#: One implementation of an event hook, ready to call: the function, its plugin, the hook, the arguments it takes.
_Planned = tuple[Callable[..., Any], str, str, tuple[str, ...]]


def _on_asyncio(function: Callable[..., Any], *args: Any) -> Any:
    return call_on_asyncio(function, args)


def _where(plugin: str, hook: str, call_id: str | None, event_id: str | None) -> str:
    """``plugin NAME: HOOK, call ID, event ID``: the place named in every failure line."""
    where = f"plugin {plugin}: {hook}"
    if call_id:
        where += f", call {one_line(call_id, 130)}"
    if event_id:  # from the stream: any length, any characters
        where += f", event {one_line(event_id, 100)}"
    return where


def _origin(exc: BaseException) -> str:
    """`` (at file.py:LINE in function)`` for the innermost frame, so the line alone points at the bug."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f" (at {code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name}; --log-level debug shows the traceback)"
