"""The service (``[server]``, ``[discovery]``): the HTTP server (``/healthz``, ``/metrics``, Atoms webhooks,
``POST /calls``) and the intakes that feed calls to the runner (the listing poller, pushes), built around a runner.

Internal.
"""
