"""The identity of a run: what determines its heatmaps, by content, not by path (no torch here).

Resume keeps an output folder's results only while its identity holds, and `gradcam compare` names the
parts in which two runs differ. The parts (a flat mapping, `section.key` -> a JSON value):

- the model by content: a checkpoint, ONNX or pickled file by its sha256; a factory by its function's
  name and its source file's sha256 (a `pkg.module:fn` factory's module file is found with
  `importlib.util.find_spec`, without importing the module); labels by their list of names, from a file
  or inline (a count and a sha256). Names of fixed files are content: torchvision weights names
  (`IMAGENET1K_V2`, `DEFAULT`), timm's `pretrained`, the torchvision/timm model name;
- the model keys that shape the maps: kwargs, target_layer, output, the layouts, the token grid;
- every `preprocess` and `cam` key (fast_decode included), and `runtime.precision` (bf16, fp16 and fp32
  heatmaps differ); `cam.metrics` and its settings only when metrics are on (they change no heatmap, but
  the records then hold their values: a folder never mixes records with and without them).

Not part of it: where files are (a second clone of the same weights is the same run), the device (at the
same precision), batch size, workers, threads, output and input options, and model.allow_pickle and
model.num_classes (a permission and a check, neither changes a heatmap).

Files are hashed once per run: `FileHashes` caches sha256 by (path, size, mtime_ns); run.json keeps that
cache, so a rerun does not re-hash a 500 MB checkpoint whose size and mtime did not change.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradcam_cli.config import Config, ModelConfig, looks_like_path, metric_keys_off
from gradcam_cli.io.labels import label_names

# model keys that shape the heatmaps, besides the source, weights and labels (described separately)
MODEL_KEYS = ("kwargs", "target_layer", "output", "input_layout", "activation_layout", "token_grid", "skip_tokens")
FILE_NOUNS = {
    "model.weights": "the weights file",
    "model.factory": "the factory's source file",
    "model.pickled": "the pickled model file",
    "model.onnx": "the ONNX file",
    "model.labels": "the labels",
}
_MEMO: dict[tuple[str, int, int], str] = {}  # this process's hashes, by (path, size, mtime_ns)


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, remembered in this process by (path, size, mtime_ns): the identity check
    and the model loader of one run hash a checkpoint once."""
    info = os.stat(path)
    key = (os.path.abspath(path), info.st_size, info.st_mtime_ns)
    if key not in _MEMO:
        _MEMO[key] = _digest(Path(path))
    return _MEMO[key]


class FileHashes:
    """sha256 of files, cached by (path, size, mtime_ns); `known` is the cache an earlier run recorded
    (run.json's `file_hashes`), `used` what this identity read (the cache to record next)."""

    def __init__(self, known: Any = None) -> None:
        self.known: dict[str, dict[str, Any]] = dict(known) if isinstance(known, dict) else {}
        self.used: dict[str, dict[str, Any]] = {}

    def sha256(self, path: str | Path) -> str | None:
        """The file's sha256, or None when it is not a readable regular file."""
        name = os.path.abspath(path)
        try:
            info = os.stat(name)
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        entry = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
        cached = self.known.get(name)
        if (
            isinstance(cached, dict)
            and isinstance(cached.get("sha256"), str)
            and all(cached.get(k) == v for k, v in entry.items())
        ):
            sha256 = cached["sha256"]
            _MEMO.setdefault((name, info.st_size, info.st_mtime_ns), sha256)
        else:
            try:
                sha256 = file_sha256(Path(name))
            except OSError:
                return None
        self.used[name] = dict(entry, sha256=sha256)
        return sha256


@dataclass(frozen=True)
class RunIdentity:
    """The parts of a run's identity; `missing` names the parts whose file could not be read (part -> path)."""

    parts: dict[str, Any]
    missing: dict[str, str]

    @property
    def hash(self) -> str:
        return identity_hash(self.parts)


def identity_hash(parts: dict[str, Any]) -> str:
    """The manifest's and run.json's `config_hash`: sha256 of the parts as canonical JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _names(names: list[Any]) -> dict[str, Any]:
    listed = [str(name) for name in names]
    text = json.dumps(listed, ensure_ascii=False, separators=(",", ":"))
    return {"names": len(listed), "sha256": hashlib.sha256(text.encode()).hexdigest()}


def _module_file(module: str) -> str | None:
    """The file of a module, without importing it (its parent packages are imported, as Python must)."""
    try:
        spec = importlib.util.find_spec(module)
    except Exception:  # noqa: BLE001 - not found, or a parent package that raises on import: no file
        return None
    origin = getattr(spec, "origin", None) if spec is not None else None
    return origin if origin and os.path.isfile(origin) else None


def run_identity(config: Config, hashes: FileHashes | None = None) -> RunIdentity:
    """The identity of a run of `config` (after `with_source_defaults`: the preprocessing the run uses)."""
    hashes = hashes if hashes is not None else FileHashes()
    model: ModelConfig = config.model
    missing: dict[str, str] = {}

    def content(key: str, path: str | Path | None, **names: Any) -> dict[str, Any]:
        sha256 = hashes.sha256(path) if path is not None else None
        if sha256 is None:
            missing[key] = str(path)
            return dict(names, missing=str(path))
        return dict(names, sha256=sha256)

    source = model.source
    parts: dict[str, Any] = {"model.source": source}
    if source in ("torchvision", "timm"):
        parts[f"model.{source}"] = getattr(model, source)
    elif source == "factory":
        target, _, function = (model.factory or "").rpartition(":")
        if target.endswith(".py"):
            parts["model.factory"] = content("model.factory", target, function=function)
        else:
            parts["model.factory"] = content("model.factory", _module_file(target), module=target, function=function)
    else:
        parts[f"model.{source}"] = content(f"model.{source}", getattr(model, source))
    if model.weights is None:
        parts["model.weights"] = None
    elif looks_like_path(model.weights):
        parts["model.weights"] = content("model.weights", model.weights)
    else:
        parts["model.weights"] = {"name": model.weights}
    labels = model.labels
    if isinstance(labels, list):
        parts["model.labels"] = _names(labels)
    elif labels in ("from-weights", "none"):
        parts["model.labels"] = labels
    elif not os.path.isfile(labels):
        missing["model.labels"] = labels
        parts["model.labels"] = {"missing": labels}
    else:
        parts["model.labels"] = _names(label_names(Path(labels)))
    dumped = model.model_dump(mode="json")
    parts.update({f"model.{key}": dumped[key] for key in MODEL_KEYS})
    parts.update({f"preprocess.{key}": value for key, value in config.preprocess.model_dump(mode="json").items()})
    parts.update({f"cam.{key}": value for key, value in metric_keys_off(config.cam.model_dump(mode="json")).items()})
    parts["runtime.precision"] = config.runtime.precision
    return RunIdentity(parts, missing)


def _defaults() -> dict[str, Any]:
    """Each plain part's default: a part an earlier version did not record counts as unchanged while it is
    at its default (an upgrade that adds a key must not orphan existing output folders)."""
    from gradcam_cli.config import CamConfig, PreprocessConfig

    found: dict[str, Any] = {"runtime.precision": "fp32"}
    for section, model in (("model", ModelConfig), ("preprocess", PreprocessConfig), ("cam", CamConfig)):
        for key, field in model.model_fields.items():
            if section == "model" and key not in MODEL_KEYS:
                continue
            default = field.get_default(call_default_factory=True)
            found[f"{section}.{key}"] = json.loads(json.dumps(default))
    return found


PART_DEFAULTS = _defaults()
_UNSET = object()


def differing_parts(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The parts whose values differ; a part only one side records counts at its default on the other."""
    changed = []
    for key in [*after, *(k for k in before if k not in after)]:
        old = before.get(key, PART_DEFAULTS.get(key, _UNSET))
        new = after.get(key, PART_DEFAULTS.get(key, _UNSET))
        if old != new:
            changed.append(key)
    return changed


def _short(sha256: Any) -> str:
    return f"{str(sha256)[:12]}..."


def _shown(key: str, value: Any) -> str:
    """A part's value in words."""
    if value is None or value is _UNSET:
        return "none" if value is None else "(not recorded)"
    if isinstance(value, dict):
        if "missing" in value:
            return f"{value['missing']} (gone)"
        if "name" in value:
            return str(value["name"])
        if "names" in value:
            return f"a list of {value['names']} names (sha256 {_short(value.get('sha256'))})"
        function = f"{value.get('module') or 'a file'}:{value['function']} " if value.get("function") else "a file "
        return f"{function}(sha256 {_short(value.get('sha256'))})"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def describe_difference(key: str, before: Any, after: Any, since: str = " since the last run") -> str:
    """One part's change in words: "the weights file's content changed since the last run (sha256 ab12...
    -> cd34...)", "runtime.precision changed: fp32 -> bf16"."""
    noun = FILE_NOUNS.get(key)
    if noun and isinstance(before, dict) and "missing" in before:
        return (
            f"{noun} of the last run ({before['missing']}) is gone, so it cannot be checked against "
            f"{_shown(key, after)}"
        )
    if noun and isinstance(before, dict) and isinstance(after, dict) and "sha256" in before and "sha256" in after:
        same_names = {k: v for k, v in before.items() if k != "sha256"} == {
            k: v for k, v in after.items() if k != "sha256"
        }
        if key == "model.labels" and "names" in before and "names" in after:
            counts = (
                f"{before['names']} names -> {after['names']} names"
                if before["names"] != after["names"]
                else f"{after['names']} names, not the same ones"
            )
            return f"the labels changed{since} ({counts})"
        if same_names:
            return f"{noun}'s content changed{since} (sha256 {_short(before['sha256'])} -> {_short(after['sha256'])})"
    return f"{key} changed: {_shown(key, before)} -> {_shown(key, after)}"


def describe_differences(
    before: dict[str, Any], after: dict[str, Any], since: str = " since the last run"
) -> list[str]:
    """Every differing part in words (see `describe_difference`), in the parts' order."""
    return [
        describe_difference(
            key, before.get(key, PART_DEFAULTS.get(key, _UNSET)), after.get(key, PART_DEFAULTS.get(key, _UNSET)), since
        )
        for key in differing_parts(before, after)
    ]


def recorded_main_file(config: Config) -> str | None:
    """The part whose sha256 an earlier release recorded as the manifest's `model.checkpoint_sha256`: the
    weights file when there is one, else the pickled or ONNX file."""
    model = config.model
    if model.weights is not None and looks_like_path(model.weights):
        return "model.weights"
    if model.source in ("pickled", "onnx"):
        return f"model.{model.source}"
    return None
