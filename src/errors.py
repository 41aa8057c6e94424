"""The errors a user can cause or fix, each printed by the stages as one line (``pipeline/_stage.py``).

They live here, apart from the code that raises them, so that catching one does not put that code on a
stage's import path (``src/codedeps.py``).
"""


class ConfigError(ValueError):
    """An invalid params file or value; the message names the file and the key."""


class DataError(ValueError):
    """A bad sample or annotation file; the message names the file and the problem."""


class DownloadError(RuntimeError):
    """A file could not be fetched; the message says how to supply it by hand."""


class Interrupted(RuntimeError):
    """Training stopped on request (SIGTERM) after saving a checkpoint; re-running resumes it."""
