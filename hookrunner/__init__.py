"""hookrunner: run pluggy hooks on the live event streams of Smallest AI Atoms voice-agent calls.

Everything a plugin may import is exported here; the rest of the package is internal.
"""

__version__ = "0.1.0"

from .api import HOOKRUNNER_API_VERSION
from .context import App, CallContext, Turn
from .events import (
    CallEnd,
    CallStart,
    Event,
    Metrics,
    SseClose,
    SseInit,
    TtsCompleted,
    TurnLatency,
    UnknownEvent,
    UserInterimTranscription,
    UserTranscription,
)
from .hookspecs import hookimpl
from .logs import redact_in_logs
from .platform_webhooks import PlatformDelivery
from .settings import Setting, at_least, between, check_table, one_of
from .triggers import Trigger, type_selected

__all__ = [
    "__version__",
    "HOOKRUNNER_API_VERSION",
    "hookimpl",
    "redact_in_logs",
    "App",
    "CallContext",
    "Turn",
    "Event",
    "SseInit",
    "SseClose",
    "UserInterimTranscription",
    "UserTranscription",
    "TtsCompleted",
    "CallStart",
    "CallEnd",
    "TurnLatency",
    "Metrics",
    "UnknownEvent",
    "PlatformDelivery",
    "Trigger",
    "type_selected",
    "Setting",
    "check_table",
    "at_least",
    "between",
    "one_of",
]
