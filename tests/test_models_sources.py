"""models/sources.py: one registry of model sources, the same names as the config's, and their defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradcam_cli.config import MODEL_SOURCES, parse_config
from gradcam_cli.models.sources import SOURCES, describe, with_source_defaults


def test_the_registry_and_the_config_name_the_same_sources() -> None:
    assert tuple(SOURCES) == MODEL_SOURCES


@pytest.mark.parametrize(
    ("model", "described"),
    [
        ({"torchvision": "resnet18"}, "torchvision:resnet18"),
        ({"factory": "pkg.mod:build"}, "factory:pkg.mod:build"),
    ],
)
def test_each_config_names_one_source(tmp_path: Path, model: dict, described: str) -> None:
    config = parse_config({"model": model}, tmp_path)
    assert config.model.source in SOURCES and describe(config.model) == described


def test_torchvision_preprocessing_is_offered_not_imposed(tmp_path: Path) -> None:
    """A torchvision config keeps its own preprocess keys (its config_hash must not change); the weights'
    preprocessing is what `gradcam init` writes into a new config."""
    config = parse_config({"model": {"torchvision": "vit_h_14", "weights": "IMAGENET1K_SWAG_E2E_V1"}}, tmp_path)
    assert with_source_defaults(config) is config
    assert SOURCES["torchvision"].preprocessing(config.model)["size"] == [518, 518]


def test_a_missing_onnx_file_fills_nothing(tmp_path: Path) -> None:
    config = parse_config({"model": {"onnx": "missing.onnx"}}, tmp_path)
    assert with_source_defaults(config).preprocess.size == (224, 224)  # loading the model reports the file
