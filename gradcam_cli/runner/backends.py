"""Where a run's CAMs are computed (`--engine`): in this process, or on a Ray cluster.

A backend is a module with the four functions of `Backend`; `run()` picks one by name from BACKENDS and
never knows which. Backends share the runner's pieces (todo, loader, render, options) and never import
each other; each is imported only when chosen, so `--engine local` never imports Ray's code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gradcam_cli.errors import ConfigError

if TYPE_CHECKING:
    from gradcam_cli.config import Config
    from gradcam_cli.runner.job import RunJob
    from gradcam_cli.runner.options import RunOptions, RunSummary

BACKENDS: dict[str, str] = {"local": "gradcam_cli.runner.local", "ray": "gradcam_cli.runner.ray_data"}


class Backend(Protocol):
    def require(self) -> None:
        """Raise a ConfigError (exit 2) when the backend's optional extra is missing."""

    def driver_config(self, config: Config) -> Config:
        """The config this process builds and validates the model with."""

    def connect(self, config: Config, options: RunOptions) -> Callable[[], None] | None:
        """Reach the compute before the output folder is touched; returns the shutdown to call at the end."""

    def stream(self, job: RunJob) -> RunSummary:
        """Explain what is still to do; records are durable per batch whatever stops the loop."""


def check_backend_name(name: str) -> None:
    """An unknown --engine is a usage error (checked before anything is imported or loaded)."""
    if name not in BACKENDS:
        raise ConfigError(f"--engine must be {' or '.join(BACKENDS)}, not {name!r}.")


def backend_named(name: str) -> Backend:
    """The backend called `name` (the value of --engine), imported now."""
    check_backend_name(name)
    return importlib.import_module(BACKENDS[name])  # type: ignore[return-value]
