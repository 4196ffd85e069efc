"""Getting messages to notifiers' endpoints: the outbox (order per key, retries, bounds), the dead-letter file, and
the ``redeliver`` and ``replay`` commands that send letters and kept messages again.

Internal: plugins import these names from ``hookrunner.delivery``.
"""
