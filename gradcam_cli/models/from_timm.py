"""timm models (`model.timm`, extra `gradcam-cli[timm]`): architecture and preprocessing from timm's registry.

Weights come from a checkpoint file, or from timm's own pretrained download (`weights: pretrained`).
"""

from __future__ import annotations

from typing import Any

from gradcam_cli.config import ModelConfig, did_you_mean
from gradcam_cli.errors import ConfigError, ModelError
from gradcam_cli.models.built import Built, random_init
from gradcam_cli.models.checkpoints import load_weights_file

INSTALL_HINT = "model.timm needs the optional timm extra: pip install 'gradcam-cli[timm]' (or pip install timm)."


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return timm


def preprocessing(config: ModelConfig) -> dict[str, Any]:
    """The input size, mean and std timm's pretrained config gives the model; unknown names suggest close ones."""
    timm = _timm()
    try:
        pretrained = timm.get_pretrained_cfg(config.timm)
    except Exception:  # timm raises several types for unknown names
        pretrained = None
    if pretrained is None:
        hint = did_you_mean(config.timm, timm.list_models(), n=3)
        raise ConfigError(f"model.timm: unknown timm model {config.timm!r}{hint}.")
    return {"size": tuple(pretrained.input_size[-2:]), "mean": tuple(pretrained.mean), "std": tuple(pretrained.std)}


def build(config: ModelConfig) -> Built:
    """A timm model: its architecture, then a checkpoint file or timm's pretrained weights."""
    timm = _timm()
    pretrained = config.weights in ("pretrained", "DEFAULT")
    try:
        module = timm.create_model(config.timm, pretrained=pretrained, **config.kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.kwargs for timm model {config.timm}: {exc}.") from None
    except Exception as exc:  # network and hub errors come in many types
        if not pretrained:
            raise
        raise ModelError(
            f"cannot load timm's pretrained weights for {config.timm} ({type(exc).__name__}: {exc}). Offline, "
            "save a state_dict on a machine that has them and set model.weights to its path."
        ) from None
    if config.weights is None:
        return random_init(module, f"timm {config.timm}", "pretrained or a checkpoint file")
    return Built(module, checkpoint_sha256=load_weights_file(module, config))
