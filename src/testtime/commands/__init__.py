"""CLI sub-commands: one module each, exposing ``register(subparsers)``; see ``testtime.cli``."""

from __future__ import annotations

import re


def plain(doc: str | None) -> str:
    """A module docstring as ``--help`` text: no reST markup (````x````, ``Examples::``, ``:func:`x```)."""
    text = doc or ""
    text = re.sub(r":(?:func|class|mod|meth|attr):`~?([^`]+)`", r"\1", text)
    text = text.replace("``", "").replace("::\n", ":\n")
    return text.strip() + "\n"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    """SIGTERM (``kill PID``) is handled as Ctrl-C: ``finally`` blocks run (temporary folders, workers)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
