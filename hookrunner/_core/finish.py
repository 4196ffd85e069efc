"""Why a call is over for the runner: the ``reason`` of ``on_call_finished``, its counts and its exit code.

A ``StrEnum``, so a plugin may compare with the plain strings (``reason == "ended"``) that logs, metrics labels
and webhook bodies show, or with the members (``reason is FinishReason.ENDED``).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FinishReason"]


class FinishReason(StrEnum):
    """Why a call is over: the ``reason`` argument of ``on_call_finished``."""

    #: The stream sent ``sse_close``: the call ended.
    ENDED = "ended"
    #: The call was over before it could be subscribed (Atoms answered 400).
    COMPLETED = "completed"
    #: Atoms does not know the call, or it belongs to another org (404).
    NOT_FOUND = "not_found"
    #: The stream kept failing and ``[runner.reconnect]`` gave up.
    GAVE_UP = "gave_up"
    #: The runner was stopped while the call was live.
    SHUTDOWN = "shutdown"
    #: Atoms refused the API key, which stops the runner.
    AUTH_FAILED = "auth_failed"
    #: Something unforeseen went wrong while following the call (logged in one line).
    FAILED = "failed"
