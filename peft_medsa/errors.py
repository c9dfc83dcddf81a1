"""The errors peft-medsa raises for mistakes a user can fix: a bad config value, a bad input tensor, a corrupt or
unsupported file, a task spec that does not match its data, an adapter made for another base.

Each message names the input, what was expected and how to fix it. They subclass the built-in type a caller
would catch anyway (`ValueError`, `FileNotFoundError`, `OSError`), so existing `except ValueError` code keeps
working, and `MedSAError`, so that the `medsa` command line can report exactly these in one line and let any
other exception (a genuine bug) surface with its traceback.
"""

from __future__ import annotations


class MedSAError(Exception):
    """Base class: a mistake in what the user gave, reported as one line by the CLI."""


class MedSAValueError(MedSAError, ValueError):
    """A value, tensor, config field, task spec or prompt that is wrong (type, range, shape, non-finite)."""


class MedSAFileNotFoundError(MedSAError, FileNotFoundError):
    """A file, folder or Hub id that does not exist (or cannot be reached offline)."""


class MedSAFileError(MedSAError, OSError):
    """A file that exists but cannot be used: corrupt, truncated, unsupported, or a write that failed."""


class MedSAConnectionError(MedSAError, ConnectionError):
    """A Hub id that cannot be reached (offline, or no network) and has no local copy."""
