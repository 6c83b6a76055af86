"""`gradcam sweep`: the shared pass per batch, the ranking on the demo CNN (a deliberately bad explanation ranks
below gradcam), layer entries, the cost columns, the winner's snippet, and the command's exit codes and promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.config import load_config, parse_config, read_config_file
from gradcam_cli.engine import CamEngine
from gradcam_cli.engine.methods import METHODS, CamInputs, CamMethod
from gradcam_cli.errors import ConfigError
from gradcam_cli.runner.sweep import SweepRequest, run_sweep
from tests.conftest import REPO, write_yaml

runner = CliRunner()
DEMO_IMAGES = REPO / "sample_images" / "demo"
DEMO_WEIGHTS = REPO / "gradcam_cli" / "demo" / "demo_cnn.safetensors"
FAST = {"limit": 6, "metric_steps": 8}


@pytest.fixture
def demo_config(tmp_path: Path) -> Path:
    """configs/demo.yaml with its asset paths made absolute, on the CPU, decoding in this process."""
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data["model"]["weights"] = str(DEMO_WEIGHTS)
    data["model"]["labels"] = str(REPO / "gradcam_cli" / "demo" / "labels.txt")
    data["runtime"].update(device="cpu", workers=0, batch_size=4)
    data["output"]["dir"] = str(tmp_path / "never-written")
    return write_yaml(tmp_path / "demo.yaml", data)


def _gradcam_map(x: CamInputs) -> torch.Tensor:
    return (x.gradients.mean(dim=(2, 3), keepdim=True) * x.activations).sum(dim=1, keepdim=True).clamp(min=0)


def inverted(x: CamInputs) -> torch.Tensor:
    """The test hook: gradcam's map upside down (hot where gradcam is cold), (B, 1, h, w)."""
    cam = _gradcam_map(x)
    return cam.amax(dim=(2, 3), keepdim=True) - cam


def constant(x: CamInputs) -> torch.Tensor:
    """The test hook: the same value everywhere, whatever the image."""
    return torch.ones_like(x.activations[:, :1])


@pytest.fixture
def bad_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "inverted", CamMethod("inverted", inverted))
    monkeypatch.setitem(METHODS, "constant", CamMethod("constant", constant))


# the ranking --------------------------------------------------------------------------------------------------
def test_a_deliberately_bad_explanation_ranks_below_gradcam(demo_config: Path, bad_methods: None) -> None:
    request = SweepRequest(methods=("inverted", "gradcam", "constant"), **FAST)
    sweep = run_sweep(load_config(demo_config), [str(DEMO_IMAGES)], request)
    order = [entry.method for entry in sweep.entries]
    assert order[0] == "gradcam", order
    scores = {entry.method: entry.score for entry in sweep.entries}
    deletion = {entry.method: entry.metrics["deletion"] for entry in sweep.entries}
    insertion = {entry.method: entry.metrics["insertion"] for entry in sweep.entries}
    assert scores["gradcam"] - scores["inverted"] > 0.3, scores  # clearly, not by a hair
    assert scores["gradcam"] - max(scores["inverted"], scores["constant"]) > 4 * sweep.best.stderr
    assert deletion["gradcam"] < deletion["inverted"] and insertion["gradcam"] > insertion["inverted"]
    constant_entry = next(entry for entry in sweep.entries if entry.method == "constant")
    assert constant_entry.blank == sweep.maps == 6  # flat maps are counted as blank
    assert sweep.images == 6 and sweep.rule == "insertion - deletion"


def test_every_batch_is_one_shared_pass_and_each_combination_is_timed_alone(
    config_file, image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared, alone = [], []
    explain_each, explain = CamEngine.explain_each, CamEngine.explain
    monkeypatch.setattr(
        CamEngine, "explain_each", lambda self, *a, **k: shared.append(1) or explain_each(self, *a, **k)
    )
    monkeypatch.setattr(
        CamEngine, "explain", lambda self, *a, **k: alone.append(self.method.name) or explain(self, *a, **k)
    )
    seen: list[tuple[list[str], set[tuple[str, str]]]] = []
    request = SweepRequest(methods=("gradcam", "layercam", "scorecam"), layers=("features.0", "features.3"), limit=3)
    sweep = run_sweep(
        load_config(config_file(runtime={"batch_size": 2, "workers": 0, "device": "cpu"})),
        [str(image_folder)],
        request,
        on_batch=lambda paths, batches: seen.append((paths, set(batches))),
    )
    assert len(shared) == 2  # 3 images in batches of 2: one explain_each per batch for the 6 combinations
    assert [paths for paths, _ in seen] == [["a.jpg", "a.png"], ["sub/b.png"]]
    keys = {(m, layer) for m in request.methods for layer in request.layers}
    assert all(batch_keys == keys for _, batch_keys in seen)
    # timing: each alone, at least 3 times and 0.25 s, at most 2 s
    timed = {method: alone.count(method) for method in request.methods}
    assert set(alone) == set(request.methods) and all(count >= 2 * 3 for count in timed.values()), timed
    passes = {(entry.method, entry.given): entry.extra_passes for entry in sweep.entries}
    assert passes[("gradcam", "features.3")] == passes[("layercam", "features.0")] == 0
    assert passes[("scorecam", "features.3")] == 16 and passes[("scorecam", "features.0")] == 8  # channels
    assert all(entry.images_per_second > 0 for entry in sweep.entries)
    assert sweep.maps == 3 and sweep.metric_passes == 2 * 20  # 32x32 input: 20 steps each, the plain one known


def test_layer_entries_auto_duplicates_and_averaged_pairs(config_file, image_folder: Path) -> None:
    config = load_config(config_file())
    request = SweepRequest(
        methods=("gradcam",), layers=("auto", "features", "features.0+features.3", "features.3"), limit=2
    )
    sweep = run_sweep(config, [str(image_folder)], request)
    entries = {entry.given: entry for entry in sweep.entries}
    assert set(entries) == {"auto", "features.0+features.3", "features.3"}  # features is auto's pick: once
    assert entries["auto"].layers == ("features",) and entries["auto"].layer_label == "auto (features)"
    assert entries["features.0+features.3"].target_layer == ["features.0", "features.3"]
    default = run_sweep(config, [str(image_folder)], SweepRequest(methods=("gradcam",), limit=1))
    assert [entry.layers for entry in default.entries] == [("features.3",)]  # model.target_layer


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (SweepRequest(methods=("gradcam", "gradcamm++")), "unknown method 'gradcamm++'. Did you mean 'gradcam++'?"),
        (SweepRequest(methods=("gradcam",), metrics=("insertoin",)), "Did you mean 'insertion'?"),
        (SweepRequest(methods=("gradcam", "GradCAM")), "'gradcam' is listed twice"),
        (SweepRequest(methods=()), "--methods is empty"),
        (SweepRequest(methods=("gradcam",), layers=("features.3+",)), "an empty name"),
        (SweepRequest(methods=("gradcam",), layers=("featres.3",)), "--layers: no module named 'featres.3'"),
    ],
)
def test_bad_names_are_config_errors(config_file, image_folder: Path, request_: SweepRequest, message: str) -> None:
    with pytest.raises(ConfigError, match="did you mean|Did you mean|twice|empty") as error:
        run_sweep(load_config(config_file()), [str(image_folder)], request_)
    assert message in str(error.value)


def test_the_winners_snippet_merged_into_the_config_parses(demo_config: Path) -> None:
    request = SweepRequest(methods=("gradcam", "layercam"), layers=("features", "features.1+features"), **FAST)
    sweep = run_sweep(load_config(demo_config), [str(DEMO_IMAGES)], request)
    from gradcam_cli.reports.sweep import config_snippet

    for entry in sweep.entries:  # every entry's snippet, as if it had won: single layers and averaged pairs
        sweep.entries = [entry] + [e for e in sweep.entries if e is not entry]
        snippet = yaml.safe_load(config_snippet(sweep))
        data = read_config_file(demo_config)
        for section, values in snippet.items():
            data[section] = {**data.get(section, {}), **values}
        config = parse_config(data, demo_config.parent)
        assert config.cam.method == entry.method
        assert config.model.target_layers == list(entry.layers)


# the command -------------------------------------------------------------------------------------------------
def test_sweep_command_writes_only_the_reports_asked_for(
    demo_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    args = ["sweep", "-c", str(demo_config), "-i", str(DEMO_IMAGES), "--methods", "gradcam,layercam", "-q"]
    result = runner.invoke(app, [*args, "--limit", "4", "--metric-steps", "4", "--out", "report/sweep"])
    assert result.exit_code == 0, result.output
    assert "best: " in result.output and "cam:\n  method: " in result.output
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    made = {Path("report"), Path("report/sweep")} | {
        Path("report/sweep") / name for name in ("sweep.json", "sweep.md", "sweep.html", "best.yaml")
    }
    assert set(after) - set(before) == made and set(before) <= set(after)
    report = json.loads((tmp_path / "report/sweep/sweep.json").read_text())
    assert report["tool"]["command"] == "sweep" and len(report["ranking"]) == 2
    assert (tmp_path / "report/sweep/best.yaml").read_text() == report["snippet"]
    single = runner.invoke(app, [*args, "--limit", "2", "--metric-steps", "4", "--snippet", "winner.yaml"])
    assert single.exit_code == 0, single.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == sorted([*after, Path("winner.yaml")])


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--methods", "gradcam,hirescm"], "Did you mean 'hirescam'?"),
        (["--layers", "feature"], "--layers: no module named 'feature'"),
        (["--metrics", "deletoin"], "Did you mean 'deletion'?"),
        (["--json", "missing/sweep.json"], "does not exist"),
    ],
)
def test_sweep_command_usage_errors_are_one_paragraph_exit_2(
    demo_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str], expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = runner.invoke(app, ["sweep", "-c", str(demo_config), "-i", str(DEMO_IMAGES), "--limit", "1", *extra])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("gradcam: error:")]
    assert len(errors) == 1
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_sweep_command_with_a_bad_config_is_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  factory: x.py:build\ncam:\n  methd: gradcam\n")
    result = runner.invoke(app, ["sweep", "-c", str(bad), "-i", str(DEMO_IMAGES)])
    assert result.exit_code == 2 and "unknown key 'cam.methd'" in result.output and "Traceback" not in result.output


def test_sweep_help_does_not_import_torch() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from gradcam_cli.cli import app; "
        "r = CliRunner().invoke(app, ['sweep', '--help']); assert r.exit_code == 0, r.output; "
        "assert '--methods' in r.output and '--layers' in r.output; "
        "assert 'torch' not in sys.modules, 'torch imported on the help path'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
