"""The base class of errors in what a user gave, as opposed to bugs.

A :class:`UserError` says what to fix: a config key, a ``file:line:field``, a model name. The
``dualforge`` command prints it as one line ``error: <message>`` and exits with status 2; any
other exception keeps its traceback. Subclasses keep their usual base too (``ConfigError`` and
``DataError`` are ``ValueError`` s), so ``except ValueError`` callers still catch them.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input (config value, data file, model name); the message names it.

    ``status`` is the exit status the ``dualforge`` command ends with (2; 130 for Ctrl-C).
    """

    status = 2


class UsageError(UserError):
    """A bad command-line argument (``--dims a,b``, ``--k 0``); the message names the flag."""
