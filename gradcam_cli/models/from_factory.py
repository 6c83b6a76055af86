"""Your own model: a factory function (`model.factory`) or, opted in, a whole pickled module (`model.pickled`).

A factory is `"pkg.module:fn"` or `"path/to/file.py:fn"` and returns the architecture; weights come from
a checkpoint file. A pickled module can run code from the file, so the config must say `allow_pickle`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from gradcam_cli.config import ModelConfig
from gradcam_cli.errors import ConfigError, ModelError
from gradcam_cli.models.built import Built
from gradcam_cli.models.checkpoints import file_sha256, load_weights_file


def _raised(exc: BaseException) -> str:
    """What user code raised, for a message; SystemExit (sys.exit in a factory) says so with its code.
    KeyboardInterrupt is never caught: Ctrl-C stops the run."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}) (SystemExit); a factory must return a torch module"
    return f"{type(exc).__name__}: {exc}"


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    target, _, name = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ConfigError(f"model.factory file not found: {path}.")
            module_name = f"_gradcam_factory_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
            spec_obj = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec_obj)  # type: ignore[arg-type]
            sys.modules[module_name] = module
            spec_obj.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except ImportError as exc:
        raise ConfigError(f"model.factory: cannot import {target!r}: {exc}.") from None
    except (Exception, SystemExit) as exc:  # the user's module raised (or called sys.exit) while importing
        raise ConfigError(f"model.factory: importing {target!r} failed: {_raised(exc)}.") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"model.factory: {target!r} has no callable named {name!r}.")
    return factory


def _load_pickled(path: Path) -> nn.Module:
    if not path.is_file():
        raise ConfigError(f"model.pickled: file not found: {path}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelError(f"model.pickled: cannot load {path}: {type(exc).__name__}: {exc}.") from None
    if not isinstance(obj, nn.Module):
        raise ConfigError(f"model.pickled: {path} holds a {type(obj).__name__}, not a torch module.")
    return obj


def _weights_into(module: nn.Module, config: ModelConfig) -> str | None:
    """A checkpoint file's weights (its sha256); a weights *name* only exists for torchvision models."""
    if config.weights is None:
        return None
    sha256 = load_weights_file(module, config)
    if sha256 is None:
        raise ConfigError(
            f"model.weights: {config.weights!r} is not a file path; weights names only exist for torchvision "
            "models. Give the path of a .pt/.pth/.safetensors checkpoint."
        )
    return sha256


def build(config: ModelConfig) -> Built:
    """The factory's module, with the checkpoint file's weights."""
    factory = _import_factory(config.factory or "")
    try:
        module = factory(**config.kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.factory {config.factory}: {exc} (check model.kwargs).") from None
    except SystemExit as exc:  # else the run would end with the factory's exit status, silently
        raise ConfigError(f"model.factory {config.factory} failed: {_raised(exc)}.") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model.factory {config.factory} returned {type(module).__name__}, not a torch module.")
    return Built(module, checkpoint_sha256=_weights_into(module, config))


def build_pickled(config: ModelConfig) -> Built:
    """A whole pickled module (allow_pickle checked by the config); a checkpoint file may replace its weights."""
    assert config.pickled is not None
    module = _load_pickled(config.pickled)
    return Built(module, checkpoint_sha256=_weights_into(module, config) or file_sha256(config.pickled))
