"""Error types the CLI maps to exit codes.

Per-image failures are data (error records), not exceptions; these are for problems that stop a run
before (or instead of) any work.
"""

from __future__ import annotations

# Exit codes are part of the public contract (README "Exit codes").
EXIT_OK = 0
EXIT_IMAGES_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_OUTPUT = 4
EXIT_INTERNAL = 5  # an unexpected failure (a worker process died, an internal error): the run stopped


class GradcamError(Exception):
    """A problem the user can fix; the message is one paragraph that says how."""

    exit_code = EXIT_USAGE


class ConfigError(GradcamError):
    """The config file, a CLI option or a referenced asset (weights, labels, factory) is unusable."""


class ModelError(GradcamError):
    """The model could not be built, loaded or used as configured."""


class InputError(GradcamError):
    """An --input path does not exist or yields nothing usable."""


class OutputError(GradcamError):
    """The output folder cannot be written (permissions, disk full); records written so far stay valid."""

    exit_code = EXIT_OUTPUT


class GradcamWarning(UserWarning):
    """Something the user should know that does not stop the run; the CLI shows it unless --quiet and
    records it in --log-file (library code never prints)."""
