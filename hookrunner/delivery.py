"""What a notifier plugin builds on to deliver messages durably: the outbox, its messages and outcomes, the retry
policy and its settings, and the HTTP helpers the bundled webhook and Slack plugins use.

These names are promised (``tests/test_public_api.py`` pins them); the modules behind them are internal. A plugin
opens an outbox with ``app.open_outbox(name, deliver, dead_letter=..., policy=...)`` in ``on_startup``: the runner
then delivers it in the background, shows its counts on ``/metrics``, keeps its messages in the journal, and at
shutdown delivers what is queued within the grace and dead-letters the rest (docs/writing-plugins.md). A plugin
that must keep to an outside service's rate limit takes turns from ``app.pacing`` (a ``Pacing``), which every
worker process of the run shares.
"""

from hookrunner._core.backoff import DEFAULT_MAX_RETRY_AFTER, parse_retry_after
from hookrunner._core.bounded_http import request, truncated
from hookrunner._core.text import json_bytes, one_line
from hookrunner._delivery.outbox import Deliverer, Outbox, OutboxMessage, Outcome, RetryPolicy
from hookrunner._delivery.pacing import Pacing
from hookrunner._delivery.retry_settings import retry_problems, retry_settings

__all__ = [
    "Outbox",
    "OutboxMessage",
    "Outcome",
    "Deliverer",
    "RetryPolicy",
    "Pacing",
    "retry_settings",
    "retry_problems",
    "parse_retry_after",
    "DEFAULT_MAX_RETRY_AFTER",
    "request",
    "truncated",
    "json_bytes",
    "one_line",
]
