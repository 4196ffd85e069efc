"""The run (``[runner]``, ``[plugins]``): the runner and its per-call pipeline, how it stops, dispatch to pluggy
hooks, plugin loading and settings, and what plugins are handed (``App``, ``CallContext``). Calls reach it through
``Runner.follow``; it knows nothing of where they were found (the listing, the server).

Internal: plugins import these names from ``hookrunner``.
"""
