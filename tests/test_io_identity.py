"""The run identity (io/identity.py): what determines the heatmaps, by content and not by path."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gradcam_cli.config import Config, parse_config
from gradcam_cli.io import identity as identity_module
from gradcam_cli.io.identity import FileHashes, describe_differences, differing_parts, run_identity
from tests.conftest import ASSETS, REPO


def config(base: Path, **sections: Any) -> Config:
    data: dict[str, Any] = {
        "model": {"factory": "net.py:build", "weights": "w.pt", "labels": "labels.txt", "target_layer": "features.3"},
        "preprocess": {"size": [32, 32]},
    }
    for key, value in sections.items():
        data[key] = dict(data.get(key, {}), **value)
    return parse_config(data, base)


def clone(folder: Path, tiny_weights: Path) -> Path:
    """A checkout with the factory, its weights and labels (a second clone is the same files elsewhere)."""
    folder.mkdir(parents=True)
    shutil.copy(ASSETS / "tiny_models.py", folder / "net.py")
    shutil.copy(tiny_weights, folder / "w.pt")
    (folder / "labels.txt").write_text("cat\ndog\nbird\n")
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_files_at_other_paths_are_the_same_identity(tmp_path: Path, tiny_weights: Path) -> None:
    first, second = clone(tmp_path / "a", tiny_weights), clone(tmp_path / "b" / "deeper", tiny_weights)
    one, two = run_identity(config(first)), run_identity(config(second))
    assert one.hash == two.hash and not one.missing
    assert str(tmp_path) not in json.dumps(one.parts)  # no path is part of it
    assert one.parts["model.weights"] == {"sha256": sha256(tiny_weights)}
    assert one.parts["model.factory"] == {"function": "build", "sha256": sha256(ASSETS / "tiny_models.py")}


def test_content_is_part_of_it_and_changes_are_said_in_words(tmp_path: Path, tiny_weights: Path) -> None:
    import torch

    from tests.assets.tiny_models import TinyCNN

    folder = clone(tmp_path / "a", tiny_weights)
    before = run_identity(config(folder)).parts
    torch.manual_seed(1)
    torch.save(TinyCNN().state_dict(), folder / "w.pt")  # retrained, saved to the same path
    (folder / "labels.txt").write_text("cat\ndog\nbird\nfish\n")
    with (folder / "net.py").open("a") as handle:
        handle.write("\n# a changed factory\n")
    after = run_identity(config(folder, runtime={"precision": "bf16"})).parts
    assert differing_parts(before, after) == ["model.factory", "model.weights", "model.labels", "runtime.precision"]
    words = describe_differences(before, after)
    old, new = before["model.weights"]["sha256"][:12], after["model.weights"]["sha256"][:12]
    assert f"the weights file's content changed since the last run (sha256 {old}... -> {new}...)" in words
    assert "the labels changed since the last run (3 names -> 4 names)" in words
    assert any(w.startswith("the factory's source file's content changed since the last run") for w in words)
    assert "runtime.precision changed: fp32 -> bf16" in words


def test_what_does_not_change_heatmaps_is_not_part_of_it(tmp_path: Path, tiny_weights: Path) -> None:
    folder = clone(tmp_path / "a", tiny_weights)
    plain = run_identity(config(folder))
    other = run_identity(
        config(
            folder,
            model={"allow_pickle": True, "num_classes": 3},
            output={"dir": str(tmp_path / "elsewhere"), "overlays": False, "colormap": "turbo"},
            runtime={"device": "cuda:1", "batch_size": 7, "workers": 3, "threads": 2, "fuse_batchnorm": False},
            input={"exclude": ["*.gif"], "max_pixels": 1000},
        )
    )
    assert other.hash == plain.hash
    for section, key, value in [
        ("runtime", "precision", "fp16"),
        ("preprocess", "fast_decode", True),
        ("preprocess", "resize", "letterbox"),
        ("cam", "method", "layercam"),
        ("cam", "targets", ["dog"]),
        ("model", "target_layer", "features.0"),
        ("model", "kwargs", {"num_classes": 3}),
    ]:
        changed = run_identity(config(folder, **{section: {key: value}}))
        assert differing_parts(plain.parts, changed.parts) == [f"{section}.{key}"]


def test_metrics_are_part_of_it_only_when_on(tmp_path: Path, tiny_weights: Path) -> None:
    """cam.metrics off: no metric part at all (the identity of every earlier folder stands); on: the
    metrics and their settings, so a folder never mixes records with and without them."""
    folder = clone(tmp_path / "a", tiny_weights)
    plain = run_identity(config(folder))
    assert not any(key in plain.parts for key in ("cam.metrics", "cam.metric_steps", "cam.road_percentiles"))
    assert run_identity(config(folder, cam={"metric_steps": 7, "road_percentiles": [50]})).hash == plain.hash
    on = run_identity(config(folder, cam={"metrics": ["deletion"]}))
    assert on.parts["cam.metric_steps"] == 20 and on.parts["cam.road_percentiles"][0] == 10
    assert differing_parts(plain.parts, on.parts) == ["cam.metrics"]
    finer = run_identity(config(folder, cam={"metrics": ["deletion"], "metric_steps": 40}))
    assert differing_parts(on.parts, finer.parts) == ["cam.metric_steps"]


def test_labels_count_by_their_names(tmp_path: Path, tiny_weights: Path) -> None:
    folder = clone(tmp_path / "a", tiny_weights)
    (folder / "labels.json").write_text(json.dumps(["cat", "dog", "bird"]))
    from_text = run_identity(config(folder)).parts["model.labels"]
    assert run_identity(config(folder, model={"labels": "labels.json"})).parts["model.labels"] == from_text
    assert run_identity(config(folder, model={"labels": ["cat", "dog", "bird"]})).parts["model.labels"] == from_text
    swapped = run_identity(config(folder, model={"labels": ["dog", "cat", "bird"]})).parts
    assert describe_differences({"model.labels": from_text}, {"model.labels": swapped["model.labels"]}) == [
        "the labels changed since the last run (3 names, not the same ones)"
    ]


def test_names_of_fixed_files_are_content(tmp_path: Path) -> None:
    parts = run_identity(
        parse_config({"model": {"torchvision": "resnet50", "weights": "IMAGENET1K_V2"}}, tmp_path)
    ).parts
    assert parts["model.torchvision"] == "resnet50" and parts["model.weights"] == {"name": "IMAGENET1K_V2"}
    assert parts["model.labels"] == "from-weights"


def test_a_module_factory_counts_by_its_file_and_is_not_imported(tmp_path: Path, tiny_weights: Path) -> None:
    """The identity is computed before the model is loaded: no torch, the factory's module not imported."""
    path = tmp_path / "c.json"
    model = {"factory": "tests.assets.tiny_models:build", "weights": str(tiny_weights), "target_layer": "features.3"}
    path.write_text(json.dumps({"model": model}))
    script = (
        "import json, sys\n"
        "from gradcam_cli.config import load_config\n"
        "from gradcam_cli.io.identity import run_identity\n"
        f"parts = run_identity(load_config({str(path)!r})).parts\n"
        "assert 'torch' not in sys.modules and 'tests.assets.tiny_models' not in sys.modules, sorted(sys.modules)\n"
        "print(json.dumps(parts['model.factory']))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = {"module": "tests.assets.tiny_models", "function": "build", "sha256": sha256(ASSETS / "tiny_models.py")}
    assert json.loads(done.stdout) == expected


def test_hashes_are_cached_by_path_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.pt"
    big.write_bytes(b"x" * 1000)
    info = big.stat()
    known = {str(big): {"size": 1000, "mtime_ns": info.st_mtime_ns, "sha256": "f" * 64}}
    hashed: list[Path] = []
    real = identity_module._digest
    monkeypatch.setattr(identity_module, "_digest", lambda path: hashed.append(path) or real(path))
    identity_module._MEMO.clear()
    hashes = FileHashes(known)
    assert hashes.sha256(big) == "f" * 64 and not hashed  # trusted: same size and mtime
    assert hashes.used == known
    os.utime(big, ns=(info.st_atime_ns, info.st_mtime_ns + 1))  # touched: hashed again
    assert FileHashes(known).sha256(big) == hashlib.sha256(b"x" * 1000).hexdigest() and hashed == [big]
    assert FileHashes().sha256(tmp_path / "absent.pt") is None


def test_a_part_an_earlier_version_did_not_record_counts_at_its_default() -> None:
    before = {"cam.method": "gradcam"}  # recorded before preprocess.fast_decode existed
    assert differing_parts(before, {"cam.method": "gradcam", "preprocess.fast_decode": False}) == []
    assert differing_parts(before, {"cam.method": "gradcam", "preprocess.fast_decode": True}) == [
        "preprocess.fast_decode"
    ]
