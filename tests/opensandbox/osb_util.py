"""Shared constants and helpers for the OpenSandbox SDK suite."""

from datetime import timedelta

IMAGE = "python:3.11"  # unknown to runbox: mapped to its default root filesystem

# Generous: the suite must not flake on a loaded CI box.
READY_TIMEOUT = timedelta(seconds=60)
REQUEST_TIMEOUT = timedelta(seconds=60)


def stdout_text(execution) -> str:
    """stdout of an Execution: execd sends one event per line, newline stripped."""
    return "\n".join(m.text for m in execution.logs.stdout)


def stderr_text(execution) -> str:
    return "\n".join(m.text for m in execution.logs.stderr)
