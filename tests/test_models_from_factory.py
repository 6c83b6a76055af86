"""models/from_factory.py: user factories that misbehave are config errors that name the factory."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradcam_cli.config import parse_config
from gradcam_cli.errors import ConfigError
from gradcam_cli.models.from_factory import build


def _factory(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "factory.py"
    path.write_text(source)
    return path


@pytest.mark.parametrize(
    "source",
    [
        "import sys\nsys.exit(0)\n",  # sys.exit while importing once ended the run with exit 0, silently
        "import sys\n\ndef build():\n    sys.exit(0)\n",  # ... or while building the model
    ],
)
def test_a_factory_that_calls_sys_exit_is_a_config_error(tmp_path: Path, source: str) -> None:
    path = _factory(tmp_path, source)
    config = parse_config({"model": {"factory": f"{path}:build"}}, tmp_path).model
    with pytest.raises(ConfigError, match=r"factory.*sys\.exit\(0\)"):
        build(config)


def test_ctrl_c_in_a_factory_is_not_caught(tmp_path: Path) -> None:
    path = _factory(tmp_path, "def build():\n    raise KeyboardInterrupt\n")
    config = parse_config({"model": {"factory": f"{path}:build"}}, tmp_path).model
    with pytest.raises(KeyboardInterrupt):
        build(config)
