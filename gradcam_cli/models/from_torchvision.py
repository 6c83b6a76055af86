"""torchvision models (`model.torchvision`): architecture by name, weights by enum name or checkpoint file.

Named weights come through torch's download cache; offline, the error says which file to copy where.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gradcam_cli.config import ModelConfig, did_you_mean, looks_like_path
from gradcam_cli.errors import ConfigError, ModelError
from gradcam_cli.models.built import Built, random_init
from gradcam_cli.models.checkpoints import load_state, load_weights_file


def _torchvision_weights(name: str, weights: str) -> Any:
    from torchvision import models

    try:
        enum = models.get_model_weights(name)
    except (ValueError, KeyError):
        return None
    try:
        return enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except KeyError:
        choices = ["DEFAULT", *enum.__members__]
        raise ConfigError(
            f"model.weights: {weights!r} is not a weights name for {name}; valid: {', '.join(choices)}, "
            "or a path to a checkpoint file."
        ) from None


def _download_state_dict(weights: Any) -> dict[str, torch.Tensor]:
    """torchvision weights through torch's own download cache; offline, say what to do instead."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # urllib/network errors come in many types
        raise ModelError(
            f"cannot load torchvision weights {weights}: the file {cache} is not cached and downloading "
            f"{weights.url} failed ({type(exc).__name__}: {exc}). Download it once on a machine with "
            f"internet access and copy it to {cache}, or save a state_dict and set model.weights to its path."
        ) from None


def build(config: ModelConfig) -> Built:
    """The architecture, then the named weights (downloaded once) or a checkpoint file."""
    from torchvision import models

    name = config.torchvision or ""
    available = models.list_models()
    if name not in available:
        raise ConfigError(f"model.torchvision: unknown model {name!r}{did_you_mean(name, available, n=3, cutoff=0.5)}.")
    enum_weights = None
    if config.weights is not None and not looks_like_path(config.weights):
        enum_weights = _torchvision_weights(name, config.weights)
    try:
        module = models.get_model(name, weights=None, **config.kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.kwargs for {name}: {exc}.") from None
    if config.weights is None:
        return random_init(module, f"torchvision {name}", "DEFAULT (downloaded once) or a checkpoint file")
    if enum_weights is not None:
        load_state(module, _download_state_dict(enum_weights), str(enum_weights))
        categories = enum_weights.meta.get("categories")
        return Built(module, categories=list(categories) if categories else None)
    return Built(module, checkpoint_sha256=load_weights_file(module, config))


def check_classifier_name(model: str) -> None:
    """Image classifiers only: detection, segmentation, video and optical-flow models are not explained."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if model not in names:
        other = model in torchvision.models.list_models()
        why = " is not an image classifier (gradcam explains classifiers)" if other else " is not a torchvision model"
        raise ConfigError(f"--model: {model!r}{why}{did_you_mean(model, names, n=3)}.")


def weights_preprocessing(model: str, weights: str) -> dict[str, Any]:
    """Input size, mean and std the named torchvision weights were trained with (no download)."""
    from torchvision.models import get_model_weights

    choices = get_model_weights(model)
    names = ["DEFAULT", *(w.name for w in choices)]
    if weights not in names:
        raise ConfigError(f"--weights: {model} has no weights {weights!r}; choose one of {', '.join(names)}.")
    transforms = choices[weights].transforms()
    crop = int(transforms.crop_size[0])
    return {"size": [crop, crop], "mean": list(transforms.mean), "std": list(transforms.std)}


def preprocessing(config: ModelConfig) -> dict[str, Any]:
    """What the named weights were trained with; nothing for a checkpoint file of unknown training."""
    if config.weights is None or looks_like_path(config.weights):
        return {}
    return weights_preprocessing(config.torchvision or "", config.weights)
