"""What every layer shares and none owns: errors, text helpers, the config and its settings helpers, the events
and triggers plugins receive, counters, logging, and the small HTTP helpers (bounded reads, backoff, ASGI).

Internal: plugins import these names from ``hookrunner`` or ``hookrunner.delivery``. Nothing here imports another
sub-package of hookrunner.
"""
