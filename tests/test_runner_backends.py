"""runner/backends.py: backends are chosen by name from one dict and share one small interface."""

from __future__ import annotations

import pytest

from gradcam_cli.errors import ConfigError
from gradcam_cli.runner.backends import BACKENDS, backend_named, check_backend_name


def test_unknown_backend_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="--engine must be local or ray, not 'spark'"):
        check_backend_name("spark")


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_has_the_interface(name: str) -> None:
    backend = backend_named(name)
    for function in ("require", "driver_config", "connect", "stream"):
        assert callable(getattr(backend, function)), f"{name} backend lacks {function}()"


def test_the_local_backend_builds_with_the_run_config(tiny_config, tmp_path) -> None:
    from gradcam_cli.config import parse_config

    config = parse_config(tiny_config, tmp_path)
    local = backend_named("local")
    local.require()
    assert local.driver_config(config) is config and local.connect(config, None) is None
