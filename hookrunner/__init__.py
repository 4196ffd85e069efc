"""hookrunner: run pluggy hooks on the live event streams of Smallest AI Atoms voice-agent calls.

What a plugin may import is exported here, in ``hookrunner.delivery`` (what a notifier builds on: the outbox, its
messages and outcomes, retry policy, dead letters) and in ``hookrunner.testing``; those three are promised, and
``tests/test_public_api.py`` pins them. Everything else lives in underscore sub-packages (``hookrunner._run``,
``hookrunner._stream``, ...) and may change in any release; docs/architecture.md says what each one does.
"""

from hookrunner._core.api import HOOKRUNNER_API_VERSION, __version__
from hookrunner._run.context import App, CallContext, Turn
from hookrunner._core.errors import ConfigError, HookrunnerError, PluginLoadError
from hookrunner._core.finish import FinishReason
from hookrunner._core.events import EVENT_CLASSES, CallEnd, CallStart, Event, Metrics, SseClose, SseInit, TtsCompleted, TurnLatency, UnknownEvent, UserInterimTranscription, UserTranscription
from hookrunner._run.hookspecs import hookimpl
from hookrunner._core.logs import redact_in_logs
from hookrunner._core.platform_delivery import PlatformDelivery
from hookrunner._core.settings import Setting, at_least, between, check_table, http_url, key_text, one_of, secret_problem, url_problem
from hookrunner._core.triggers import SEVERITIES, Trigger, type_selected

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
    "EVENT_CLASSES",
    "FinishReason",
    "PlatformDelivery",
    "Trigger",
    "SEVERITIES",
    "type_selected",
    "Setting",
    "check_table",
    "at_least",
    "between",
    "one_of",
    "url_problem",
    "http_url",
    "secret_problem",
    "key_text",
    "HookrunnerError",
    "ConfigError",
    "PluginLoadError",
]
