"""`gradcam compare`: attention regression between two output folders (no torch here).

Records are matched by `path`. Per image we compare the top-1 prediction and the heatmaps of the
explained classes (paired by class index; the two top-ranked maps when the top class changed) with
four drift measures on the 0..1 heatmaps at the original image size:

- Pearson correlation (shape of the attention, blind to global gain),
- mean absolute difference (how much attention moved, in heatmap units),
- IoU of the two maps' top-20% regions (whether the hot spot is the same place),
- the peak's shift in pixels (the centroid of each map's maximum).

An image drifts when any measure is beyond its threshold (`compare:` config section or options). With
`compare.max_metric_drop`, the run as a whole also fails when the mean of a faithfulness metric
(cam.metrics) over the images explained in both runs got worse by more than that.

The folders are data, not trusted: every record is checked for the types compare reads (a malformed one
is exit 2 naming it), files must lie inside their folder, and a picture declaring more pixels than
`input.max_pixels` is refused before it is decoded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gradcam_cli.config import METRIC_HIGHER_IS_BETTER, CompareConfig, InputConfig
from gradcam_cli.errors import ConfigError
from gradcam_cli.io.files import inside
from gradcam_cli.io.identity import describe_differences
from gradcam_cli.io.manifest import read_manifest

MAX_PIXELS = InputConfig().max_pixels  # the inputs' default decompression-bomb limit, for heatmaps too
TOP_FRACTION = 0.2  # the "hot region" compared by IoU: each map's top 20% of pixels

# Statuses, in the order a report lists them (worst first).
FAILED = "failed"  # the current run could not explain an image the baseline explained
DRIFT = "drift"
MISSING_CURRENT = "missing-in-current"
MISSING_BASELINE = "missing-in-baseline"
BOTH_FAILED = "failed-both"
PASS = "pass"
STATUS_ORDER = (FAILED, DRIFT, MISSING_CURRENT, MISSING_BASELINE, BOTH_FAILED, PASS)


@dataclass(frozen=True)
class Drift:
    """How one heatmap differs from its baseline."""

    correlation: float
    mean_abs_diff: float
    iou: float
    peak_shift: float | None  # pixels; None when either map is empty (no peak)


@dataclass
class ImageComparison:
    """One image's verdict, with what a reviewer needs to see why."""

    path: str
    status: str
    reasons: list[str] = field(default_factory=list)
    baseline_label: str | None = None
    current_label: str | None = None
    baseline_score: float | None = None
    current_score: float | None = None
    drift: Drift | None = None  # the worst pair of heatmaps (lowest correlation)
    baseline_record: dict[str, Any] | None = None
    current_record: dict[str, Any] | None = None
    baseline_cam: dict[str, Any] | None = None  # the worst pair's cam entries (for the HTML report)
    current_cam: dict[str, Any] | None = None

    @property
    def failing(self) -> bool:
        return self.status in (FAILED, DRIFT)

    @property
    def score_change(self) -> float | None:
        if self.baseline_score is None or self.current_score is None:
            return None
        return self.current_score - self.baseline_score

    def severity(self) -> tuple[int, float]:
        """Sort key: status order, then the lowest correlation first."""
        correlation = self.drift.correlation if self.drift is not None else 1.0
        return (STATUS_ORDER.index(self.status), correlation)


@dataclass(frozen=True)
class MetricCheck:
    """`compare.max_metric_drop` for one metric: its mean over the cams of the images ok in both runs."""

    name: str
    baseline_mean: float
    current_mean: float
    images: int  # images ok on both sides that have the metric
    limit: float

    @property
    def drop(self) -> float:
        """How much worse the current mean is (negative: better), in the metric's own units."""
        change = self.current_mean - self.baseline_mean
        return -change if METRIC_HIGHER_IS_BETTER.get(self.name, True) else change

    @property
    def failing(self) -> bool:
        return self.drop > self.limit

    def describe(self) -> str:
        word = "worse" if self.drop > 0 else "better"
        return (
            f"{self.name} mean {self.baseline_mean:.3f} -> {self.current_mean:.3f} ({word} by {abs(self.drop):.3f}; "
            f"limit {self.limit}; {self.images} images)"
        )


@dataclass
class Comparison:
    """The whole comparison: verdicts worst first, the thresholds used, and notes about the two runs."""

    baseline_dir: Path
    current_dir: Path
    thresholds: CompareConfig
    images: list[ImageComparison]
    notes: list[str] = field(default_factory=list)
    metric_checks: list[MetricCheck] = field(default_factory=list)  # compare.max_metric_drop, per metric

    def count(self, status: str) -> int:
        return sum(1 for image in self.images if image.status == status)

    @property
    def failing(self) -> list[ImageComparison]:
        return [image for image in self.images if image.failing]

    @property
    def failing_metrics(self) -> list[MetricCheck]:
        return [check for check in self.metric_checks if check.failing]

    @property
    def exit_code(self) -> int:
        return 1 if self.failing or self.failing_metrics else 0

    def summary_line(self) -> str:
        counts = ", ".join(f"{self.count(s)} {s}" for s in STATUS_ORDER if self.count(s))
        verdict = "DRIFT" if self.failing or self.failing_metrics else "OK"
        metrics = ""
        if self.failing_metrics:
            metrics = "; metric mean worse: " + ", ".join(check.describe() for check in self.failing_metrics)
        return f"{verdict}: {len(self.images)} images compared ({counts or 'none'}){metrics}."


def heatmap_drift(baseline: np.ndarray, current: np.ndarray) -> Drift:
    """Drift measures between two heatmaps of the same size (uint8 0..255 or float 0..1)."""
    if baseline.shape != current.shape:
        raise ValueError(f"heatmap sizes differ: {baseline.shape} vs {current.shape}")
    a = _unit(baseline)
    b = _unit(current)
    return Drift(
        correlation=_correlation(a, b),
        mean_abs_diff=float(np.abs(a - b).mean(dtype=np.float64)),
        iou=_top_region_iou(a, b),
        peak_shift=_peak_shift(a, b),
    )


def _unit(heatmap: np.ndarray) -> np.ndarray:
    # float32 (not float64): half the memory on large maps; sums below accumulate in float64
    values = heatmap.astype(np.float32)
    return values / np.float32(255.0) if heatmap.dtype == np.uint8 else values


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    da, db = a - np.float32(a.mean(dtype=np.float64)), b - np.float32(b.mean(dtype=np.float64))
    norm = math.sqrt(float((da * da).sum(dtype=np.float64)) * float((db * db).sum(dtype=np.float64)))
    if norm == 0.0:  # a flat map has no shape: identical flat maps agree, anything else does not
        return 1.0 if np.array_equal(a, b) else 0.0
    return float((da * db).sum(dtype=np.float64) / norm)


def _top_region(heatmap: np.ndarray) -> np.ndarray:
    flat = heatmap.ravel()
    k = max(1, int(round(flat.size * TOP_FRACTION)))
    threshold = np.partition(flat, flat.size - k)[flat.size - k]
    # Ties at the threshold join the region; an all-zero map has no hot region at all.
    return (heatmap >= threshold) & (heatmap > 0)


def _top_region_iou(a: np.ndarray, b: np.ndarray) -> float:
    region_a, region_b = _top_region(a), _top_region(b)
    union = int(np.count_nonzero(region_a | region_b))
    return 1.0 if union == 0 else int(np.count_nonzero(region_a & region_b)) / union


def _peak(heatmap: np.ndarray) -> tuple[float, float] | None:
    peak = heatmap.max()
    if peak <= 0:
        return None
    ys, xs = np.nonzero(heatmap == peak)  # a plateau's centre, so ties do not jump to a corner
    return float(xs.mean()), float(ys.mean())


def _peak_shift(a: np.ndarray, b: np.ndarray) -> float | None:
    pa, pb = _peak(a), _peak(b)
    if pa is None or pb is None:
        return None
    return math.hypot(pa[0] - pb[0], pa[1] - pb[1])


@dataclass
class RunResults:
    """An output folder's manifest, indexed by path."""

    out_dir: Path
    manifest: dict[str, Any]
    records: dict[str, dict[str, Any]]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _optional(kind: type | tuple[type, ...]) -> Any:
    return lambda value: value is None or isinstance(value, kind)


# What compare reads from a record, and the type each must have when present (missing keys are allowed).
_RECORD_FIELDS: dict[str, Any] = {
    "status": _optional(str),
    "source": _optional(str),
    "archive": _optional(str),
    "sha256": _optional(str),
    "file_size": lambda value: value is None or (isinstance(value, int) and not isinstance(value, bool)),
    "error": lambda value: (
        value is None
        or (isinstance(value, dict) and all(isinstance(value.get(k, ""), str) for k in ("type", "message")))
    ),
    "predictions": _optional(list),
    "cams": _optional(list),
}
_ENTRY_FIELDS: dict[str, Any] = {  # one prediction or cam entry
    "class_index": lambda value: value is None or (isinstance(value, int) and not isinstance(value, bool)),
    "label": _optional((str, int)),
    "score": lambda value: value is None or _is_number(value),
    "heatmap": _optional(str),
    "overlay": _optional(str),
}


def check_record(record: Any, index: int, where: str) -> None:
    """A ConfigError (exit 2) naming the record when it is not what `gradcam run` writes."""
    path = record.get("path") if isinstance(record, dict) else None
    name = f"record {index} ({_shown(path)})" if isinstance(path, str) else f"record {index}"
    problem = None
    if not isinstance(record, dict):
        problem = f"is a {type(record).__name__}, not an object"
    elif not isinstance(path, str) or not path:
        problem = f"has path {_shown(path)}, not a non-empty string"
    else:
        problem = next(
            (
                f"has {key} {_shown(record[key])}"
                for key, ok in _RECORD_FIELDS.items()
                if key in record and not ok(record[key])
            ),
            None,
        )
        for key in ("predictions", "cams"):
            for entry in record.get(key) or []:
                if problem is None and not isinstance(entry, dict):
                    problem = f"has a {key} entry {_shown(entry)}, not an object"
                elif problem is None:
                    bad = next((k for k, ok in _ENTRY_FIELDS.items() if k in entry and not ok(entry[k])), None)
                    problem = f"has a {key} entry with {bad} {_shown(entry[bad])}" if bad else None
        if problem is None and record.get("status") == "ok" and not record.get("cams"):
            problem = "is ok but has no cams (no heatmap to compare); compare needs the heatmaps of both runs"
    if problem is not None:
        raise ConfigError(
            f"{where}: {name} in its manifest.json {problem}. The manifest is not one `gradcam run` wrote; "
            "re-run `gradcam run` into a new folder."
        )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def load_results(out_dir: Path, side: str) -> RunResults:
    """Read `out_dir/manifest.json`; unusable folders and malformed records are a ConfigError (exit 2)
    naming the side."""
    manifest = read_manifest(Path(out_dir), side)
    records: dict[str, dict[str, Any]] = {}
    for index, record in enumerate(manifest.get("images", [])):
        check_record(record, index, f"{side} {out_dir}")
        records[record["path"]] = record
    return RunResults(Path(out_dir), manifest, records)


def read_picture(path: Path, mode: str) -> np.ndarray:
    """A picture file's pixels in `mode` ("L" or "RGB"), refusing more than MAX_PIXELS before decoding;
    raises ValueError for a picture that is too large or cannot be read."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"{width}x{height} pixels exceeds the limit of {MAX_PIXELS} (input.max_pixels)")
            return np.asarray(image.convert(mode))
    except ValueError:
        raise
    except MemoryError:
        raise ValueError("not enough memory to decode it") from None
    except Exception as exc:  # a decoder's failure on hostile bytes (OSError, NotImplementedError, ...)
        raise ValueError(str(exc) or type(exc).__name__) from None


def result_file(out_dir: Path, relative: Any) -> Path | None:
    """A file a manifest names, only if it lies inside its output folder (a manifest is data, not trusted)."""
    if not isinstance(relative, str) or not relative:
        return None
    try:
        return inside(out_dir, relative)
    except ValueError:
        return None


def _read_heatmap(run: RunResults, cam: dict[str, Any], path: str) -> np.ndarray:
    relative = cam.get("heatmap")
    if result_file(run.out_dir, relative) is None and relative:
        raise ConfigError(f"{run.out_dir}: record {path!r} names a heatmap outside its output folder: {relative!r}.")
    if not relative:
        raise ConfigError(
            f"{run.out_dir}: record {path!r} has no heatmap file (output.heatmaps was false); compare needs "
            "heatmaps on both sides."
        )
    try:
        return read_picture(inside(run.out_dir, relative), "L")
    except ValueError as exc:
        raise ConfigError(f"{run.out_dir}: heatmap {relative} of {path!r} cannot be read: {exc}.") from None


def _pairs(baseline: dict[str, Any], current: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Heatmaps to compare: the same class on both sides; the top-ranked maps if their classes differ."""
    old_cams, new_cams = _cams(baseline), _cams(current)
    by_class = {cam.get("class_index"): cam for cam in new_cams}
    paired = False
    for cam in old_cams:
        if cam.get("class_index") in by_class:
            paired = True
            yield cam, by_class[cam.get("class_index")]
    if not paired and old_cams and new_cams:
        yield old_cams[0], new_cams[0]


def _cams(record: dict[str, Any]) -> list[dict[str, Any]]:
    cams = record.get("cams")
    return [cam for cam in cams if isinstance(cam, dict)] if isinstance(cams, list) else []


def _top(record: dict[str, Any]) -> tuple[str | None, float | None, int | None]:
    predictions = record.get("predictions")
    if not isinstance(predictions, list) or not predictions or not isinstance(predictions[0], dict):
        return None, None, None
    return predictions[0].get("label"), predictions[0].get("score"), predictions[0].get("class_index")


def compare_image(baseline: RunResults, current: RunResults, path: str, limits: CompareConfig) -> ImageComparison:
    """The verdict for one path present on both sides."""
    old, new = baseline.records[path], current.records[path]
    result = ImageComparison(path=path, status=PASS, baseline_record=old, current_record=new)
    result.baseline_label, result.baseline_score, old_class = _top(old)
    result.current_label, result.current_score, new_class = _top(new)
    if new.get("status") != "ok":
        result.status = BOTH_FAILED if old.get("status") != "ok" else FAILED
        error = new.get("error") or {}
        result.reasons.append(f"current run failed: {error.get('type', 'error')}: {error.get('message', '')}")
        return result
    if old.get("status") != "ok":
        result.reasons.append("baseline had failed; now explained")
        return result
    if old_class != new_class and not limits.allow_label_change:
        result.reasons.append(f"top-1 class changed: {result.baseline_label} -> {result.current_label}")
    change = result.score_change
    if limits.max_score_change is not None and change is not None and abs(change) > limits.max_score_change:
        result.reasons.append(f"top-1 score changed by {change:+.3f} (limit {limits.max_score_change})")
    for old_cam, new_cam in _pairs(old, new):
        a, b = _read_heatmap(baseline, old_cam, path), _read_heatmap(current, new_cam, path)
        if a.shape != b.shape:
            result.reasons.append(f"heatmap size changed: {a.shape[1]}x{a.shape[0]} -> {b.shape[1]}x{b.shape[0]}")
            continue
        drift = heatmap_drift(a, b)
        if result.drift is None or drift.correlation < result.drift.correlation:
            result.drift, result.baseline_cam, result.current_cam = drift, old_cam, new_cam
        result.reasons.extend(_beyond(drift, limits, new_cam.get("label", new_cam.get("class_index"))))
    if result.reasons:
        result.status = DRIFT
    return result


def _beyond(drift: Drift, limits: CompareConfig, label: Any) -> list[str]:
    reasons = []
    if drift.correlation < limits.min_correlation:
        reasons.append(f"[{label}] correlation {drift.correlation:.3f} < {limits.min_correlation}")
    if drift.mean_abs_diff > limits.max_mean_abs_diff:
        reasons.append(f"[{label}] mean abs diff {drift.mean_abs_diff:.3f} > {limits.max_mean_abs_diff}")
    if drift.iou < limits.min_iou:
        reasons.append(f"[{label}] top-20% IoU {drift.iou:.3f} < {limits.min_iou}")
    shift = drift.peak_shift
    if limits.max_peak_shift is not None and shift is not None and shift > limits.max_peak_shift:
        reasons.append(f"[{label}] peak moved {shift:.1f} px > {limits.max_peak_shift}")
    return reasons


def _config_notes(baseline: RunResults, current: RunResults) -> list[str]:
    """What differs between the two runs' identities (io/identity.py), part by part, or that nothing does;
    manifests of earlier releases (no `identity`) are compared by their header keys and config_hash."""
    old_identity, new_identity = baseline.manifest.get("identity"), current.manifest.get("identity")
    notes = []
    if isinstance(old_identity, dict) and isinstance(new_identity, dict):
        notes = describe_differences(old_identity, new_identity, since=" between the runs")
        if not notes:
            notes.append(
                "the two runs have the same identity (model, weights and labels by content, target layers, "
                "preprocessing, method, targets, precision): any drift comes from the images or the machine"
            )
        old, new = baseline.manifest.get("device"), current.manifest.get("device")
        if old != new:
            notes.append(f"device differs: {old} -> {new} (not part of the identity)")
        return notes
    for key in ("method", "target_layer", "targets", "precision", "device"):
        old, new = baseline.manifest.get(key), current.manifest.get(key)
        if old != new:
            notes.append(f"{key} differs: {old} -> {new}")
    if baseline.manifest.get("config_hash") != current.manifest.get("config_hash") and not notes:
        notes.append(
            "the configs differ (config_hash), e.g. in weights or preprocessing (a manifest written by an earlier "
            "gradcam-cli does not record which parts of the run's identity differ)"
        )
    return notes


def compare_runs(baseline_dir: Path, current_dir: Path, limits: CompareConfig) -> Comparison:
    """Compare two output folders; raises ConfigError when they cannot be compared (exit 2)."""
    baseline = load_results(baseline_dir, "baseline")
    current = load_results(current_dir, "current")
    only_baseline = sorted(set(baseline.records) - set(current.records))
    only_current = sorted(set(current.records) - set(baseline.records))
    if (only_baseline or only_current) and not limits.allow_missing:
        shown = [f"missing in current: {p}" for p in only_baseline[:5]] + [
            f"missing in baseline: {p}" for p in only_current[:5]
        ]
        raise ConfigError(
            f"the two runs explain different image sets ({len(only_baseline)} only in the baseline, "
            f"{len(only_current)} only in the current run; {'; '.join(shown)}). Run both on the same inputs, "
            "or pass --allow-missing (compare.allow_missing: true) to report them instead."
        )
    images = [compare_image(baseline, current, p, limits) for p in baseline.records if p in current.records]
    images += [
        ImageComparison(path=p, status=MISSING_CURRENT, reasons=["not in the current run"]) for p in only_baseline
    ]
    images += [ImageComparison(path=p, status=MISSING_BASELINE, reasons=["not in the baseline"]) for p in only_current]
    images.sort(key=lambda image: (*image.severity(), image.path))
    if not any(image.drift is not None or image.status == FAILED for image in images):
        raise ConfigError(
            f"nothing to compare: no image was explained in both runs ({len(baseline.records)} records in the "
            f"baseline, {len(current.records)} in the current run, none ok on both sides). A check that compared "
            "nothing must not pass; look at the runs' error records."
        )
    return Comparison(
        baseline_dir=Path(baseline_dir),
        current_dir=Path(current_dir),
        thresholds=limits,
        images=images,
        notes=_config_notes(baseline, current),
        metric_checks=metric_checks(baseline, current, limits),
    )


def _metric_values(record: dict[str, Any], name: str) -> list[float]:
    values = []
    for cam in _cams(record):
        metrics = cam.get("metrics")
        value = metrics.get(name) if isinstance(metrics, dict) else None
        if _is_number(value):
            values.append(float(value))
    return values


def _metric_names(run: RunResults) -> list[str]:
    block = run.manifest.get("metrics")
    names = block.get("names") if isinstance(block, dict) else None
    return [name for name in names if isinstance(name, str)] if isinstance(names, list) else []


def metric_checks(baseline: RunResults, current: RunResults, limits: CompareConfig) -> list[MetricCheck]:
    """`compare.max_metric_drop`: per metric both runs recorded, its mean over the cams of the images ok in
    both runs (the same images on both sides, whatever --allow-missing let through). A limit with no
    metric in common is exit 2: a check that compared nothing must not pass."""
    if limits.max_metric_drop is None:
        return []
    names = [name for name in _metric_names(current) if name in _metric_names(baseline)]
    if not names:
        raise ConfigError(
            "compare.max_metric_drop is set but the two runs record no faithfulness metric in common (baseline: "
            f"{', '.join(_metric_names(baseline)) or 'none'}; current: {', '.join(_metric_names(current)) or 'none'})"
            ". Run both with the same cam.metrics, or leave max_metric_drop unset."
        )
    both = [
        path
        for path, record in current.records.items()
        if record.get("status") == "ok" and baseline.records.get(path, {}).get("status") == "ok"
    ]
    checks = []
    for name in names:
        old, new, images = [], [], 0
        for path in both:
            a, b = _metric_values(baseline.records[path], name), _metric_values(current.records[path], name)
            if a and b:
                old.extend(a)
                new.extend(b)
                images += 1
        if images:
            checks.append(MetricCheck(name, sum(old) / len(old), sum(new) / len(new), images, limits.max_metric_drop))
    return checks
