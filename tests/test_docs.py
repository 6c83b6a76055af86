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


@pytest.mark.parametrize("command", ["run", "compare", "sanity", "sweep", "init", "report", "layers"])
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


def test_readme_module_map_names_every_module() -> None:
    """`Where things live` follows the package: every module and folder is named there."""
    start = README.index("### Where things live")
    block = README[start : README.index("```\n\n", README.index("```", start) + 3)]
    package = REPO / "gradcam_cli"
    for path in sorted(package.rglob("*.py")):
        if path.name != "__init__.py":
            assert path.name in block, f"README's module map does not name {path.relative_to(package)}"
    for folder in sorted(p for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        assert f"{folder.name}/" in block, f"README's module map does not name {folder.name}/"
