"""Reading Atoms (``[atoms]``, ``[runner.reconnect]``, ``[backfill]``, the listing of ``[discovery]``): one call's
event stream and its reconnects, the call listing, a finished call's stored conversation, and what an Atoms error
answer means. It hands events and call ids on through channels and callbacks; it knows nothing of plugins.

Internal.
"""
