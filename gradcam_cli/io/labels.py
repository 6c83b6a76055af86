"""Class names from a labels file: one name per line, or a JSON list (no torch here).

Shared by the model loader and the run identity, so both see the same list of names.
"""

from __future__ import annotations

import json
from pathlib import Path

from gradcam_cli.errors import ConfigError


def label_names(path: Path) -> list[str]:
    """The names a labels file holds: a `.json` list, else the non-empty lines (stripped)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.labels: file not found: {path}.")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model.labels: {path} is not valid JSON: {exc}.") from None
        if not isinstance(data, list):
            raise ConfigError(f"model.labels: {path} must hold a JSON list of class names.")
        return [str(item) for item in data]
    return [line.strip() for line in text.splitlines() if line.strip()]
