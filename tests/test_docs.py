"""Documentation stays true: the README's config reference, options and shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradcam_cli.config import load_config
from gradcam_cli.reference import END, START, markdown, rows
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_readme_config_reference_matches_schema() -> None:
    start, end = README.index(START), README.index(END) + len(END)
    assert README[start:end] == markdown(), "regenerate with: python -m gradcam_cli.reference --write README.md"
    for key, *_ in rows():
        assert f"`{key}`" in README


@pytest.mark.parametrize("command", ["run", "compare", "init", "report", "layers"])
def test_readme_documents_every_option(command: str) -> None:
    from typer.main import get_command

    from gradcam_cli.cli import app

    click_command = get_command(app).commands[command]  # type: ignore[attr-defined]
    assert f"gradcam {command}" in README
    for param in click_command.params:
        for option in param.opts:
            if option.startswith("--"):
                assert option in README, f"{command} {option} missing from README"


def test_quick_start_is_two_commands() -> None:
    assert "make demo" in README and "make test" in README


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(config: Path) -> None:
    load_config(config)
