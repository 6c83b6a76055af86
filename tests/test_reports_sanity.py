"""`gradcam sanity`'s measures (Spearman, SSIM), its verdict and its reports (table, JSON, JUnit)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from gradcam_cli.config import SanityConfig
from gradcam_cli.errors import ConfigError
from gradcam_cli.reports.sanity import (
    CASCADE,
    RANDOM_CLASS,
    MapChange,
    SanityCheck,
    Step,
    average_ranks,
    check_report_path,
    spearman,
    ssim,
    text_table,
    write_json,
    write_junit,
)


def smooth_map(seed: int, shape: tuple[int, int] = (40, 48)) -> np.ndarray:
    """A float map in 0..1 with blobs and, like a CAM after its ReLU, a patch of exact zeros (ties)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    values = np.zeros(shape)
    for _ in range(3):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        values += np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * rng.uniform(3, 9) ** 2))
    values = np.clip(values - 0.2, 0, None)
    return (values / values.max()).astype(np.float32)


def test_average_ranks_share_ties() -> None:
    assert average_ranks(np.array([3.0, 1.0, 3.0, 0.0])).tolist() == [2.5, 1.0, 2.5, 0.0]


def test_spearman_agrees_with_scipy_on_maps_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    for seed in range(4):
        a, b = smooth_map(seed), smooth_map(seed + 10)
        expected = stats.spearmanr(a.ravel(), b.ravel()).statistic
        assert spearman(a, b) == pytest.approx(expected, abs=1e-9)


def test_spearman_is_blind_to_monotone_rescaling_and_sees_inversion() -> None:
    a = smooth_map(1)
    assert spearman(a, a**3 * 0.5) == pytest.approx(1.0)
    assert spearman(a, 1.0 - a) == pytest.approx(-1.0)


def test_spearman_of_flat_maps_is_defined() -> None:
    """A map that collapsed to blank changed (0.0); two blank maps did not (1.0); never NaN."""
    blank = np.zeros((8, 8), np.float32)
    assert spearman(blank, blank) == 1.0
    assert spearman(smooth_map(2, (8, 8)), blank) == 0.0
    with pytest.raises(ValueError, match="sizes differ"):
        spearman(blank, np.zeros((8, 9)))


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM written out window by window (Wang et al. 2004; scikit-image's gaussian_weights=True, sigma 1.5,
    use_sample_covariance=False, data_range 1), to check the filtered implementation."""
    radius = 5
    offsets = np.arange(-radius, radius + 1)
    g = np.exp(-(offsets**2) / (2 * 1.5**2))
    weights = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for y in range(radius, a.shape[0] - radius):
        for x in range(radius, a.shape[1] - radius):
            wa = a[y - radius : y + radius + 1, x - radius : x + radius + 1].astype(np.float64)
            wb = b[y - radius : y + radius + 1, x - radius : x + radius + 1].astype(np.float64)
            ma, mb = (weights * wa).sum(), (weights * wb).sum()
            va, vb = (weights * (wa - ma) ** 2).sum(), (weights * (wb - mb) ** 2).sum()
            cov = (weights * (wa - ma) * (wb - mb)).sum()
            values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_agrees_with_the_formula_window_by_window() -> None:
    a, b = smooth_map(3, (24, 30)), smooth_map(4, (24, 30))
    assert ssim(a, b) == pytest.approx(reference_ssim(a, b), abs=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, 1.0 - a) < 0


def test_ssim_of_a_map_smaller_than_the_window_uses_one_window() -> None:
    a = smooth_map(5, (6, 9))
    assert ssim(a, a) == pytest.approx(1.0)
    assert -1.0 <= ssim(a, smooth_map(6, (6, 9))) < 1.0


def step(name: str, values: list[float], kind: str = CASCADE, reaches: bool = False) -> Step:
    changes = tuple(MapChange(f"img{i}.jpg", i % 2, value, value / 2) for i, value in enumerate(values))
    return Step(name, kind, (name,) if kind == CASCADE else (), reaches, changes)


def check(deepest: list[float], **limits: float) -> SanityCheck:
    steps = [step("head", [0.95, 0.9, 0.8, 0.99]), step("features", deepest, reaches=True)]
    steps.append(step("random class", [0.1, 0.2, 0.3, 0.4], kind=RANDOM_CLASS))
    return SanityCheck("gradcam", ["features"], SanityConfig(**limits), steps, images=len(deepest))


def test_verdict_is_judged_at_the_deepest_cascade_step() -> None:
    """The head step barely changes here (as it does for class-agnostic methods): only the deepest counts."""
    passing = check([0.1, 0.2, 0.3, 0.0])
    assert not passing.flagged and passing.exit_code == 0 and passing.deepest.name == "features"
    assert passing.summary_line().startswith("PASS: gradcam's maps change")
    flagged = check([0.95, 0.92, 0.6, 0.9])
    assert flagged.exit_code == 1
    assert flagged.reasons() == [
        "mean Spearman 0.843 > 0.7 with 'features' re-initialised",
        "75% of the maps barely changed (Spearman >= 0.9), more than 50%",
    ]
    assert flagged.summary_line().startswith("FLAGGED: gradcam's maps barely change")


def test_unchanged_fraction_flags_a_method_that_ignores_the_weights_for_most_images() -> None:
    """A bimodal result (most maps unchanged, a few scrambled) can have a mean under the limit."""
    result = check([1.0, 1.0, 1.0, -0.9], max_spearman=0.9)
    assert result.deepest.mean_spearman < 0.9
    assert result.reasons() == ["75% of the maps barely changed (Spearman >= 0.9), more than 50%"]
    assert not check([1.0, 1.0, 1.0, -0.9], max_spearman=0.9, max_unchanged_fraction=0.8).flagged


def test_text_table_lists_every_step_then_the_verdict() -> None:
    lines = text_table(check([0.95, 0.92, 0.6, 0.9])).splitlines()
    assert lines[2].split()[:2] == ["step", "re-initialised"]
    assert lines[3].split() == ["1", "head", "0.910", "0.925", "0.455", "75%"]
    assert lines[4].split() == ["2", "features", "yes", "0.843", "0.910", "0.421", "75%"]
    assert lines[5].startswith("-     none: a random other class")
    assert lines[-1].startswith("FLAGGED")


def test_json_report_holds_every_map_and_the_verdict(tmp_path: Path) -> None:
    result = check([0.95, 0.92, 0.6, 0.9])
    write_json(result, tmp_path / "sanity.json")
    data = json.loads((tmp_path / "sanity.json").read_text())
    assert data["schema_version"] == 1 and data["method"] == "gradcam" and data["target_layer"] == "features"
    assert [s["name"] for s in data["steps"]] == ["head", "features", "random class"]
    assert data["steps"][1]["maps"][2] == {"path": "img2.jpg", "class_index": 0, "spearman": 0.6, "ssim": 0.3}
    assert data["steps"][1]["mean_spearman"] == pytest.approx(0.8425)
    assert data["verdict"] == {
        "flagged": True,
        "deepest_step": "features",
        "reasons": result.reasons(),
        "exit_code": 1,
    }
    assert data["thresholds"]["max_spearman"] == 0.7


def test_junit_fails_the_deepest_step_when_flagged(tmp_path: Path) -> None:
    write_junit(check([0.95, 0.92, 0.6, 0.9]), tmp_path / "flagged.xml")
    suite = ET.parse(tmp_path / "flagged.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("tests") == "3"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert list(cases) == ["01 head", "02 features", "random class"]
    failure = cases["02 features"].find("failure")
    assert failure is not None and "mean Spearman 0.843 > 0.7" in failure.get("message", "")
    assert cases["01 head"].find("failure") is None
    assert "target layer reached: no" in (cases["01 head"].findtext("system-out") or "")

    write_junit(check([0.1, 0.2, 0.3, 0.0]), tmp_path / "pass.xml")
    suite = ET.parse(tmp_path / "pass.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and not list(suite.iter("failure"))


def test_control_characters_in_paths_cannot_break_the_reports(tmp_path: Path) -> None:
    result = check([0.1, 0.2])
    result.skipped.append(("bad\x1b[2Jname\x00.jpg", "DecodeError: truncated"))
    assert "\x1b" not in text_table(result) and "\\x1b" in text_table(result)
    write_junit(result, tmp_path / "j.xml")
    ET.parse(tmp_path / "j.xml")  # still valid XML


def test_report_paths_are_checked_before_any_work(tmp_path: Path) -> None:
    check_report_path(tmp_path / "ok.json")
    with pytest.raises(ConfigError, match="does not exist"):
        check_report_path(tmp_path / "missing" / "x.json")
    with pytest.raises(ConfigError, match="is a folder"):
        check_report_path(tmp_path)
