"""Errors a user can cause. Each carries the one-line message the user reads; none needs a traceback."""

from __future__ import annotations


class HookrunnerError(Exception):
    """Base of the errors that end a command with a message and a non-zero exit."""

    exit_code = 2


class ConfigError(HookrunnerError):
    """The config file (or a plugin's settings table) is missing, unreadable or invalid; one line per problem."""


class UsageError(HookrunnerError):
    """A command-line argument or a file it names is unusable (a bad ``--call`` id, a script that cannot be read)."""


class PluginLoadError(HookrunnerError):
    """A plugin could not be imported or registered, or implements a hook that does not exist."""


class AuthError(HookrunnerError):
    """Atoms refused the API key (401/403): it is wrong for every call, so the runner stops."""
