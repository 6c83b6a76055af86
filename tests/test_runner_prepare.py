"""runner/prepare.py: a frozen PreparedRun, built once, before anything is written."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from gradcam_cli.config import parse_config
from gradcam_cli.errors import ConfigError
from gradcam_cli.runner.prepare import PreparedRun, prepare, resolve_targets, with_batch_cap


def test_prepare_builds_everything_and_is_frozen(tmp_path: Path, tiny_config: dict[str, Any]) -> None:
    config = parse_config(tiny_config, tmp_path)
    prepared = prepare(config)
    assert isinstance(prepared, PreparedRun) and prepared.config == config
    assert prepared.layer_names == ["features.3"] and prepared.num_classes == 3
    assert prepared.device == torch.device("cpu") and prepared.targets.mode == "top1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        prepared.config = config  # type: ignore[misc]
    assert not (tmp_path / "out").exists()


def test_the_model_is_built_with_the_build_config_and_the_run_keeps_its_own(
    tmp_path: Path, tiny_config: dict[str, Any]
) -> None:
    """The Ray driver validates on its CPU in fp32 while the run's config (for the actors) stays as given."""
    run_config = parse_config({**tiny_config, "runtime": {**tiny_config["runtime"], "precision": "bf16"}}, tmp_path)
    build = parse_config(tiny_config, tmp_path)
    prepared = prepare(run_config, build=build)
    assert prepared.config.runtime.precision == "bf16" and prepared.engine.precision == "fp32"


def test_batch_cap_applies_once(tmp_path: Path, tiny_config: dict[str, Any]) -> None:
    config = parse_config(tiny_config, tmp_path)
    assert with_batch_cap(config, None) is config and with_batch_cap(config, 8) is config
    assert with_batch_cap(config, 1).runtime.batch_size == 1


def test_targets_by_label_index_or_a_suggestion(tmp_path: Path, tiny_config: dict[str, Any]) -> None:
    labels = ["cat", "dog", "bird"]

    def targets(value: Any) -> Any:
        return resolve_targets(parse_config({**tiny_config, "cam": {"targets": value}}, tmp_path), labels, 3)

    assert targets(["dog", 2]).classes == (1, 2)
    assert targets("topk").mode == "topk"
    with pytest.raises(ConfigError, match="Did you mean 'cat'"):
        targets(["cta"])
    with pytest.raises(ConfigError, match="out of range"):
        targets([7])


@pytest.mark.parametrize(("precision", "allowed"), [("fp32", False), ("tf32", True), ("bf16", False)])
def test_fp32_turns_tf32_off_and_tf32_is_an_opt_in(
    tmp_path: Path, tiny_config: dict[str, Any], precision: str, allowed: bool
) -> None:
    """On Ampere and newer GPUs cuDNN convolutions run in TF32 by default: fp32 must mean fp32."""
    torch.backends.cudnn.allow_tf32 = not allowed
    torch.backends.cuda.matmul.allow_tf32 = not allowed
    config = parse_config({**tiny_config, "runtime": {**tiny_config["runtime"], "precision": precision}}, tmp_path)
    prepare(config)
    assert torch.backends.cudnn.allow_tf32 is allowed and torch.backends.cuda.matmul.allow_tf32 is allowed


def test_cublas_workspace_is_set_when_the_package_is_imported() -> None:
    import subprocess
    import sys

    code = "import os, gradcam_cli; print(os.environ['CUBLAS_WORKSPACE_CONFIG'])"
    env = {k: v for k, v in __import__("os").environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == ":4096:8"


def test_ops_without_a_deterministic_kernel_are_collected_not_printed() -> None:
    import warnings

    from gradcam_cli.runner.prepare import NondeterministicOps

    message = (
        "upsample_bilinear2d_backward_out_cuda does not have a deterministic implementation, but you set "
        "'torch.use_deterministic_algorithms(True, warn_only=True)'. You can file an issue at ..."
    )
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        with NondeterministicOps() as seen:
            for _ in range(3):
                warnings.warn(message, UserWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
    assert seen.ops == {"upsample_bilinear2d_backward_out_cuda"}
    assert [str(w.message) for w in outside] == ["something else"]


def test_cores_are_split_by_the_cores_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from gradcam_cli.runner.prepare import CoreSplit, split_cores, usable_cores

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert split_cores("auto", "auto", "auto", cpu, cores=2) == CoreSplit(decode=1, render=2, threads=2)
    assert split_cores("auto", "auto", "auto", cpu, cores=16) == CoreSplit(decode=4, render=4, threads=16)
    assert split_cores("auto", "auto", "auto", gpu, cores=16) == CoreSplit(decode=5, render=8, threads=2)
    assert split_cores(3, 0, 1, gpu, cores=16) == CoreSplit(decode=3, render=0, threads=1)  # overrides win
    # a container's or taskset's share of a big host, not the host's count
    monkeypatch.setattr(os, "cpu_count", lambda: 192)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert usable_cores() == 16
    assert split_cores("auto", "auto", "auto", gpu) == CoreSplit(decode=5, render=8, threads=2)
