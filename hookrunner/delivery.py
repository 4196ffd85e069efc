"""What a notifier plugin builds on to deliver messages durably: the outbox, its messages and outcomes, the retry
policy, the dead-letter file, and the HTTP helpers the bundled webhook and Slack plugins use.

These names are promised (``tests/test_public_api.py`` pins them); the modules behind them are internal. A plugin
opens an outbox with ``app.run_outbox(outbox)`` in ``on_startup``: the runner then delivers it in the background,
shows its counts on ``/metrics`` and keeps its messages in the journal (docs/writing-plugins.md).
"""

from hookrunner._core.backoff import DEFAULT_MAX_RETRY_AFTER, parse_retry_after
from hookrunner._core.bounded_http import request, truncated
from hookrunner._core.text import json_bytes, one_line
from hookrunner._delivery.dead_letters import DeadLetterFile
from hookrunner._delivery.outbox import Deliverer, Outbox, OutboxMessage, Outcome, RetryPolicy

__all__ = [
    "Outbox",
    "OutboxMessage",
    "Outcome",
    "Deliverer",
    "RetryPolicy",
    "DeadLetterFile",
    "parse_retry_after",
    "DEFAULT_MAX_RETRY_AFTER",
    "request",
    "truncated",
    "json_bytes",
    "one_line",
]
