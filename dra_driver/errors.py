"""Errors that end a component before or while it starts, with a message for admins.

The command prints the message alone (no traceback) and exits with status 1: the
cause is in the environment (a missing driver library, an unusable socket path, no
API credentials), not in the program.
"""

from __future__ import annotations


class StartupError(Exception):
    """The component cannot run here; the message says why and what to change."""
