"""Checkpoint files: read a state_dict safely (no unpickling unless opted in), load it strictly, hash it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gradcam_cli.config import ModelConfig, looks_like_path
from gradcam_cli.errors import ConfigError, ModelError
from gradcam_cli.io.identity import file_sha256  # remembered per process: the run's identity hashed it already


def read_checkpoint(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors or a torch file, unwrapping {"state_dict"}/{"model"} and "module."."""
    if not path.is_file():
        readme = path.parent / "README.md"  # a folder of git-ignored weights can say how to get them
        hint = f" {readme} says how to get it." if readme.is_file() else ""
        raise ConfigError(f"model.weights: checkpoint file not found: {path}.{hint}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as exc:
        hint = ""
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            hint = (
                " The file needs unpickling of arbitrary objects; if you trust it, set model.allow_pickle: "
                "true, or re-save it with torch.save(model.state_dict(), path)."
            )
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(f"cannot read checkpoint {path}: {type(exc).__name__}: {first_line}.{hint}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(f"checkpoint {path} does not hold a state_dict (a mapping of names to tensors).")
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def load_state(module: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Strict load with a message that lists the first offending keys."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
    if mismatched:
        problems.append(f"shape mismatches: {'; '.join(mismatched[:5])}" + (" ..." if len(mismatched) > 5 else ""))
    if problems:
        raise ModelError(f"weights from {origin} do not fit the model: " + "; ".join(problems) + ".")
    module.load_state_dict(state, strict=True)


def load_weights_file(module: nn.Module, config: ModelConfig) -> str | None:
    """Load `model.weights` into `module` when it names a checkpoint file; returns the file's sha256."""
    if config.weights is None or not looks_like_path(config.weights):
        return None
    path = Path(config.weights)
    load_state(module, read_checkpoint(path, config.allow_pickle), str(path))
    return file_sha256(path)
