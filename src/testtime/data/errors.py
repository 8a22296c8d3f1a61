"""Errors of the data layer.

Every problem with a user's files or arguments is raised as one of these (or FileNotFoundError /
KeyError), with a one-line message that names the file or argument and what is valid; the CLI
prints it as ``testtime CMD: error: ...`` without a traceback.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file is malformed (bad magic, truncated, count mismatch, unsafe pickle, ...)."""
