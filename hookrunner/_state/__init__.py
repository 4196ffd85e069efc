"""What survives a restart (``[state]``): the journal (SQLite) of calls, events, outbox messages, triggers and
Atoms webhooks from received to done, and the spool file where, without a journal, what could not be dispatched is
written for a user to replay.

Internal.
"""
