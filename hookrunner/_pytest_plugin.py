"""The ``pytest11`` entry point: the ``hookrunner_run`` fixture for plugin authors' tests.

pytest imports every installed ``pytest11`` module into every session of everyone who has hookrunner installed,
so this one imports nothing heavy: the runner, the simulator and hypercorn are imported when a test asks for the
fixture, not before.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def hookrunner_run() -> Any:
    """The ``run_plugins`` helper, as a fixture: ``result = await hookrunner_run([my_plugin], [sim_call(...)])``."""
    from hookrunner.testing import run_plugins

    return run_plugins
