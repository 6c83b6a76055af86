from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gradcam_cli.config import Config, apply_overrides, load_config, parse_config
from gradcam_cli.errors import ConfigError
from tests.conftest import REPO, write_yaml


def _error(data: dict, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path)
    return str(info.value)


def test_defaults_and_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cfg"
    folder.mkdir()
    path = write_yaml(
        folder / "c.yaml",
        {"model": {"factory": "models/net.py:build", "weights": "w/net.pt", "labels": "labels.txt"}},
    )
    config = load_config(path)
    assert config.model.weights == str(folder / "w" / "net.pt")
    assert config.model.labels == str(folder / "labels.txt")
    assert config.model.factory == f"{folder / 'models' / 'net.py'}:build"
    assert config.output.dir == Path("gradcam-out")  # relative to the working directory, not the config
    assert config.preprocess.size == (224, 224) and config.runtime.batch_size == 32


def test_torchvision_weights_names_are_not_paths(tmp_path: Path) -> None:
    config = parse_config({"model": {"torchvision": "resnet50", "weights": "IMAGENET1K_V2"}}, tmp_path)
    assert config.model.weights == "IMAGENET1K_V2"


def test_unknown_key_is_named_with_suggestion(tmp_path: Path) -> None:
    message = _error({"model": {"torchvison": "resnet18"}}, tmp_path)
    assert "model.torchvison" in message and "did you mean 'torchvision'" in message


def test_unknown_section_suggests(tmp_path: Path) -> None:
    message = _error({"model": {"torchvision": "resnet18"}, "runtme": {}}, tmp_path)
    assert "unknown key 'runtme'" in message and "'runtime'" in message


def test_bad_values_name_the_key(tmp_path: Path) -> None:
    base = {"torchvision": "resnet18"}
    assert "runtime.batch_size" in _error({"model": base, "runtime": {"batch_size": 0}}, tmp_path)
    assert "preprocess.resize" in _error({"model": base, "preprocess": {"resize": "squash"}}, tmp_path)
    assert "runtime.device" in _error({"model": base, "runtime": {"device": "gpu"}}, tmp_path)
    message = _error({"model": base, "cam": {"method": "gradcm"}}, tmp_path)
    assert "cam.method" in message and "'gradcam'" in message
    assert "output.alpha" in _error({"model": base, "output": {"alpha": 2}}, tmp_path)


def test_exactly_one_model_source(tmp_path: Path) -> None:
    assert "exactly one" in _error({"model": {}}, tmp_path)
    assert "exactly one" in _error({"model": {"torchvision": "resnet18", "factory": "a.b:c"}}, tmp_path)


def test_pickled_model_needs_explicit_opt_in(tmp_path: Path) -> None:
    assert "allow_pickle" in _error({"model": {"pickled": "m.pt"}}, tmp_path)
    config = parse_config({"model": {"pickled": "m.pt", "allow_pickle": True}}, tmp_path)
    assert config.model.pickled == tmp_path / "m.pt"


def test_missing_model_section(tmp_path: Path) -> None:
    assert "missing required key 'model'" in _error({}, tmp_path)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_merge_dotted_keys(tmp_path: Path) -> None:
    merged = apply_overrides({"model": {"torchvision": "resnet18"}}, {"cam.method": "layercam", "x.y": None})
    assert merged == {"model": {"torchvision": "resnet18"}, "cam": {"method": "layercam"}}
    assert parse_config(merged, tmp_path).cam.method == "layercam"


def test_config_is_frozen_and_hash_ignores_runtime(tmp_path: Path) -> None:
    a = parse_config({"model": {"torchvision": "resnet18"}, "runtime": {"batch_size": 4}}, tmp_path)
    b = parse_config({"model": {"torchvision": "resnet18"}, "runtime": {"batch_size": 64}}, tmp_path)
    c = parse_config({"model": {"torchvision": "resnet18"}, "cam": {"method": "layercam"}}, tmp_path)
    assert a.config_hash() == b.config_hash() != c.config_hash()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own frozen error
        a.runtime.batch_size = 3  # type: ignore[misc]
    assert isinstance(a, Config)


def test_onnx_is_one_more_exclusive_source(tmp_path: Path) -> None:
    config = parse_config({"model": {"onnx": "nets/model.onnx", "input_layout": "nhwc"}}, tmp_path)
    assert config.model.onnx == tmp_path / "nets" / "model.onnx" and config.model.input_layout == "nhwc"
    assert config.preprocess.size == (224, 224)  # a missing file sets no size; loading the model reports it
    assert "exactly one" in _error({"model": {"onnx": "m.onnx", "torchvision": "resnet18"}}, tmp_path)
    assert "holds the weights" in _error({"model": {"onnx": "m.onnx", "weights": "w.pt"}}, tmp_path)
    assert "only applies to model.onnx" in _error(
        {"model": {"torchvision": "resnet18", "input_layout": "nhwc"}}, tmp_path
    )
    assert "model.input_layout" in _error({"model": {"onnx": "m.onnx", "input_layout": "hwc"}}, tmp_path)


def test_pixel_range_and_channel_order(tmp_path: Path) -> None:
    base = {"torchvision": "resnet18"}
    config = parse_config({"model": base, "preprocess": {"pixel_range": [0, 255], "channel_order": "bgr"}}, tmp_path)
    assert config.preprocess.pixel_range == (0.0, 255.0) and config.preprocess.channel_order == "bgr"
    assert "low < high" in _error({"model": base, "preprocess": {"pixel_range": [1, -1]}}, tmp_path)
    assert "preprocess.channel_order" in _error({"model": base, "preprocess": {"channel_order": "grb"}}, tmp_path)


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_output_folder_name_is_refused(tmp_path: Path, tiny_config: dict, empty: str) -> None:
    with pytest.raises(ConfigError, match="empty output folder name"):
        parse_config({**tiny_config, "output": {"dir": empty}}, tmp_path)


BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
    + ["model: {torchvision: *i}"]
)


def test_yaml_aliases_are_refused_quickly(tmp_path: Path) -> None:
    """A 1 KB "billion laughs" config once ran for minutes and took gigabytes: it must fail at once."""
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    code = (
        "import sys\nfrom gradcam_cli.config import load_config\nfrom gradcam_cli.errors import ConfigError\n"
        f"try:\n    load_config({str(path)!r})\nexcept ConfigError as error:\n    print(error)\n    sys.exit(2)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert "anchors (&name), aliases (*name)" in result.stdout and "line 1" in result.stdout


def test_a_huge_bad_value_gives_a_short_message(tmp_path: Path) -> None:
    message = _error({"model": {"torchvision": "resnet18"}, "cam": {"method": "x" * 5_000_000}}, tmp_path)
    assert len(message) < 2000 and "xxx..." in message


def test_a_yaml_syntax_error_keeps_its_lines_and_caret(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  torchvision: resnet18\n  weights: [unclosed\ncam: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    lines = str(caught.value).splitlines()
    assert len(lines) > 2 and any(line.strip() == "^" for line in lines)
    assert any(str(bad) in line and "line" in line for line in lines)


def test_a_bad_option_value_blames_the_command_line_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {torchvision: resnet18}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"runtime.batch_size": 0})
    message = str(caught.value)
    assert message.startswith("command line: bad value for 'runtime.batch_size'") and str(path) not in message


def test_max_file_mb(tmp_path: Path) -> None:
    model = {"torchvision": "resnet18"}
    assert parse_config({"model": model}, tmp_path).input.max_file_mb == 1024
    assert parse_config({"model": model, "input": {"max_file_mb": 0.5}}, tmp_path).input.max_file_mb == 0.5
    with pytest.raises(ConfigError, match="input.max_file_mb"):
        parse_config({"model": model, "input": {"max_file_mb": 0}}, tmp_path)


def test_metrics_are_checked_by_name(tmp_path: Path) -> None:
    base = {"torchvision": "resnet18"}
    message = _error({"model": base, "cam": {"metrics": ["deletion", "insertoin"]}}, tmp_path)
    assert "cam.metrics" in message and "did you mean 'insertion'" in message and "road_least" in message
    assert "listed twice" in _error({"model": base, "cam": {"metrics": ["deletion", "Deletion"]}}, tmp_path)
    assert "cam.road_percentiles" in _error({"model": base, "cam": {"road_percentiles": [0, 50]}}, tmp_path)
    assert "cam.road_percentiles" in _error({"model": base, "cam": {"road_percentiles": []}}, tmp_path)
    assert "cam.metric_steps" in _error({"model": base, "cam": {"metric_steps": 1}}, tmp_path)
    config = parse_config({"model": base, "cam": {"metrics": ["ROAD_most", "deletion"]}}, tmp_path)
    assert config.cam.metrics == ("road_most", "deletion") and config.cam.metric_steps == 20


def test_metric_keys_enter_the_config_hash_only_with_metrics_on(tmp_path: Path) -> None:
    """Existing folders keep their config_hash: the metric keys count only once a metric is asked for."""
    base = {"model": {"torchvision": "resnet18"}}
    plain = parse_config(base, tmp_path)
    assert parse_config({**base, "cam": {"metric_steps": 50}}, tmp_path).config_hash() == plain.config_hash()
    on = parse_config({**base, "cam": {"metrics": ["deletion"]}}, tmp_path)
    finer = parse_config({**base, "cam": {"metrics": ["deletion"], "metric_steps": 50}}, tmp_path)
    assert len({plain.config_hash(), on.config_hash(), finer.config_hash()}) == 3


def test_metric_names_match_the_engine() -> None:
    from gradcam_cli.config import METRIC_HIGHER_IS_BETTER, METRIC_NAMES
    from gradcam_cli.engine import metrics

    assert metrics.METRIC_NAMES == METRIC_NAMES == tuple(METRIC_HIGHER_IS_BETTER)
    assert set(metrics.passes_per_cam(metrics.MetricSettings(METRIC_NAMES), 100)) == set(METRIC_NAMES)
