"""`gradcam init`: a commented starter config generated from the schema, so it never goes stale.

Every key is written with its default and its one-line description; the other model sources are
written commented out. `gradcam run` accepts the file unchanged (a test checks it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gradcam_cli.config import MODEL_SOURCES, Config, ModelConfig, looks_like_path
from gradcam_cli.errors import ConfigError
from gradcam_cli.io.files import atomic_write_bytes
from gradcam_cli.models.from_torchvision import check_classifier_name, weights_preprocessing

SECTION_NOTES = {
    "model": "Which network to explain. Exactly one source: torchvision, timm, factory, pickled or onnx.",
    "preprocess": "How images become model input; heatmaps are mapped back onto the original pixels.",
    "cam": "Which CAM method and which classes to explain.",
    "output": "What is written to the output folder.",
    "runtime": "Where and how fast to compute.",
    "input": "Which files are read.",
    "compare": "Thresholds for `gradcam compare` (attention regression checks in CI).",
    "sanity": "Thresholds for `gradcam sanity` (does the method depend on the model's weights?).",
}


def _yaml_value(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Path):
        value = str(value)
    # JSON scalars and flow lists are valid YAML and unambiguous (strings stay quoted).
    return json.dumps(value, ensure_ascii=False)


def _default(field: Any) -> Any:
    return field.default_factory() if field.default_factory is not None else field.default


def starter_config(model: str, weights: str, base_dir: Path, preprocess: dict[str, Any] | None = None) -> str:
    """The YAML text for `model` (a torchvision name) with `weights` (a name or a checkpoint path);
    `preprocess` overrides defaults the weights were trained with (size, mean, std)."""
    if looks_like_path(weights):
        weights = os.path.relpath(Path(weights).resolve(), base_dir.resolve())  # paths resolve against the file
    chosen: dict[str, Any] = {"torchvision": model, "weights": weights, **(preprocess or {})}
    lines = [
        f"# gradcam-cli config for torchvision {model}: every key with its default (see README, Configuration).",
        "# Run: gradcam run --config THIS_FILE --input IMAGES/   Inspect layers: gradcam layers --config THIS_FILE",
    ]
    for section, field in Config.model_fields.items():
        lines += ["", f"# {SECTION_NOTES.get(section, field.description or '')}", f"{section}:"]
        schema = field.annotation
        assert isinstance(schema, type) and issubclass(schema, BaseModel)
        for key, leaf in schema.model_fields.items():
            is_chosen = (schema is ModelConfig and key in (*MODEL_SOURCES, "weights")) or (
                section == "preprocess" and key in chosen
            )
            value = chosen.get(key) if is_chosen else None
            is_unused_source = schema is ModelConfig and key in MODEL_SOURCES and key not in chosen
            if value is None:
                value = _default(leaf)
            comment = f"  # {leaf.description}" if leaf.description else ""
            prefix = "  # " if is_unused_source else "  "
            lines.append(f"{prefix}{key}: {_yaml_value(value)}{comment}")
    return "\n".join(lines) + "\n"


def write_starter_config(path: Path, model: str, weights: str, force: bool = False) -> Path:
    """Write the starter config to `path`; refuses to replace a file unless `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists; pass --force to replace it or choose another --output.")
    check_classifier_name(model)
    if looks_like_path(weights):
        if not Path(weights).is_file():
            raise ConfigError(f"--weights: checkpoint file not found: {weights}.")
        preprocess = None  # a checkpoint of unknown training: the schema's defaults, for the user to check
    else:
        preprocess = weights_preprocessing(model, weights)
    atomic_write_bytes(path, starter_config(model, weights, path.resolve().parent, preprocess).encode())
    return path
