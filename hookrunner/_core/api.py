"""hookrunner's version, and the version of the plugin API, for plugins to declare what they need.

A plugin module (or plugin object or class, or the module the class is defined in) may set
``HOOKRUNNER_API_VERSION = N``: the API version it was written against. hookrunner activates it only if its own
``HOOKRUNNER_API_VERSION`` is at least N, and lists it as incompatible otherwise (``hookrunner plugins``), while
the other plugins run. The number grows when hooks or their arguments change in a way a plugin may rely on;
additions that old plugins cannot notice do not change it.

1: the hooks of ``hookrunner.hookspecs`` as of hookrunner 0.1 (events, lifecycle, triggers, validate_settings,
   outbox_deliverers, on_reload).
2: ``describe_settings`` and ``routes_for_trigger``, asked by ``hookrunner check`` (a plugin implementing them is
   refused by a hookrunner of API 1 as implementing hooks that do not exist).
"""

__version__ = "0.1.0"

HOOKRUNNER_API_VERSION = 2
