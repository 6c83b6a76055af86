"""`gradcam sanity`: how much a method's maps change when the model's weights are randomised (no torch here).

Adebayo et al. 2018 ("Sanity Checks for Saliency Maps"): an explanation that survives re-initialising the
model's weights, from the logits down, explains the input (edges, texture), not the model. The model work
is in runner/sanity.py; this module holds the measures between a trained and a randomised map, the verdict
and its reports (terminal table, JSON, JUnit).

- Spearman rank correlation, on average ranks (ties, e.g. the zeros after the CAM's ReLU, share a rank):
  the measure the paper reports, blind to any monotone change of scale.
- SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data range 1, the border
  where the window does not fit left out, as scikit-image's `gaussian_weights=True`).

Both are computed on the maps at the model input size, inside the part of the frame the image covers
(letterbox padding left out).
"""

from __future__ import annotations

import json
import math
import statistics
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gradcam_cli import __version__
from gradcam_cli.config import SanityConfig
from gradcam_cli.errors import ConfigError
from gradcam_cli.io.files import atomic_write_bytes
from gradcam_cli.reports.compare_formats import printable

SCHEMA_VERSION = 1
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03

CASCADE = "cascade"
RANDOM_CLASS = "random-class"


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of the flattened values, ties sharing the mean of their positions (float64)."""
    flat = np.asarray(values).ravel()
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    starts_group = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.append(starts[1:], flat.size)
    ranks = np.empty(flat.size, dtype=np.float64)
    ranks[order] = ((starts + ends - 1) / 2.0)[group]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps of the same shape, in [-1, 1].

    A flat map has no ranking: two flat maps agree (1.0, nothing changed), a flat and a shaped one do not
    (0.0), so an explanation that collapses to a blank map counts as changed, never as NaN."""
    if a.shape != b.shape:
        raise ValueError(f"map sizes differ: {a.shape} vs {b.shape}")
    flat_a, flat_b = bool(np.ptp(a) == 0), bool(np.ptp(b) == 0)
    if flat_a or flat_b:
        return 1.0 if flat_a and flat_b else 0.0
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float(np.clip((ra @ rb) / math.sqrt(float(ra @ ra) * float(rb @ rb)), -1.0, 1.0))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity of two maps of the same shape (float, values in 0..data_range)."""
    if a.shape != b.shape:
        raise ValueError(f"map sizes differ: {a.shape} vs {b.shape}")
    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    if min(x.shape) < SSIM_WINDOW:  # too small for the window: one window over the whole map
        mx, my = x.mean(), y.mean()
        vx, vy, cxy = x.var(), y.var(), ((x - mx) * (y - my)).mean()
        return float(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2)))

    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    local = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    pad = (SSIM_WINDOW - 1) // 2  # only windows that lie inside the map count
    return float(local[pad:-pad, pad:-pad].mean())


@dataclass(frozen=True)
class MapChange:
    """How one explained map changed: trained model vs randomised model (or another class)."""

    path: str
    class_index: int  # the class the trained model's map explains
    spearman: float
    ssim: float


def map_change(path: str, class_index: int, trained: np.ndarray, randomised: np.ndarray) -> MapChange:
    return MapChange(path, class_index, spearman(trained, randomised), ssim(trained, randomised))


@dataclass(frozen=True)
class Step:
    """One row of the check: what was randomised, and how every map changed."""

    name: str  # the block re-initialised at this step ("fc", "layer4"), or "random class"
    kind: str  # CASCADE or RANDOM_CLASS
    randomised: tuple[str, ...]  # every block re-initialised so far (the cascade is cumulative)
    reaches_target: bool  # the target layer, or a block below it, is re-initialised
    changes: tuple[MapChange, ...]

    def _values(self, key: str) -> list[float]:
        return [getattr(change, key) for change in self.changes]

    @property
    def mean_spearman(self) -> float:
        return statistics.fmean(self._values("spearman"))

    @property
    def median_spearman(self) -> float:
        return statistics.median(self._values("spearman"))

    @property
    def mean_ssim(self) -> float:
        return statistics.fmean(self._values("ssim"))

    def unchanged_fraction(self, threshold: float) -> float:
        """The fraction of maps whose Spearman with the trained map is at least `threshold`."""
        return sum(1 for value in self._values("spearman") if value >= threshold) / len(self.changes)


@dataclass
class SanityCheck:
    """The whole check: the cascade's steps top down (then the random-class row), the verdict's inputs."""

    method: str
    target_layers: list[str]
    thresholds: SanityConfig
    steps: list[Step]
    images: int  # images whose maps were compared
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): failed decodes, blank maps
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def cascade(self) -> list[Step]:
        return [step for step in self.steps if step.kind == CASCADE]

    @property
    def deepest(self) -> Step:
        return self.cascade[-1]

    def reasons(self) -> list[str]:
        """Why the method is flagged (empty: it passes). Judged at the deepest step, the most randomised model."""
        limits, step = self.thresholds, self.deepest
        found = []
        if step.mean_spearman > limits.max_spearman:
            found.append(
                f"mean Spearman {step.mean_spearman:.3f} > {limits.max_spearman} with {_blocks(step)} re-initialised"
            )
        unchanged = step.unchanged_fraction(limits.unchanged_spearman)
        if unchanged > limits.max_unchanged_fraction:
            found.append(
                f"{unchanged:.0%} of the maps barely changed (Spearman >= {limits.unchanged_spearman}), more than "
                f"{limits.max_unchanged_fraction:.0%}"
            )
        return found

    @property
    def flagged(self) -> bool:
        return bool(self.reasons())

    @property
    def exit_code(self) -> int:
        return 1 if self.flagged else 0

    def summary_line(self) -> str:
        reasons = self.reasons()
        maps = len(self.deepest.changes)
        if reasons:
            return (
                f"FLAGGED: {self.method}'s maps barely change when the model's weights are randomised "
                f"({'; '.join(reasons)}; {maps} maps of {self.images} images): they do not explain this model."
            )
        return (
            f"PASS: {self.method}'s maps change when the model's weights are randomised (mean Spearman "
            f"{self.deepest.mean_spearman:.3f} <= {self.thresholds.max_spearman} with {_blocks(self.deepest)} "
            f"re-initialised; {maps} maps of {self.images} images)."
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON report (--json): every step with its means and the per-map values."""
        limits = self.thresholds
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "gradcam-cli", "version": __version__, "command": "sanity"},
            "method": self.method,
            "target_layer": self.target_layers[0] if len(self.target_layers) == 1 else self.target_layers,
            "model": self.model,
            "thresholds": limits.model_dump(mode="json"),
            "images": self.images,
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped],
            "steps": [
                {
                    "name": step.name,
                    "kind": step.kind,
                    "randomised": list(step.randomised),
                    "reaches_target": step.reaches_target,
                    "mean_spearman": step.mean_spearman,
                    "median_spearman": step.median_spearman,
                    "mean_ssim": step.mean_ssim,
                    "unchanged_fraction": step.unchanged_fraction(limits.unchanged_spearman),
                    "maps": [
                        {"path": c.path, "class_index": c.class_index, "spearman": c.spearman, "ssim": c.ssim}
                        for c in step.changes
                    ],
                }
                for step in self.steps
            ],
            "verdict": {
                "flagged": self.flagged,
                "deepest_step": self.deepest.name,
                "reasons": self.reasons(),
                "exit_code": self.exit_code,
            },
        }


def _blocks(step: Step) -> str:
    if len(step.randomised) <= 3:
        return ", ".join(repr(name) for name in step.randomised)
    return f"{len(step.randomised)} blocks ({step.randomised[0]!r} .. {step.randomised[-1]!r})"


HEADERS = ["step", "re-initialised", "target", "mean Spearman", "median", "mean SSIM", "barely changed"]


def _cells(check: SanityCheck, index: int, step: Step) -> list[str]:
    if step.kind == RANDOM_CLASS:
        what, target = "none: a random other class, trained model", "-"
    else:
        what, target = printable(step.name), "yes" if step.reaches_target else ""
    return [
        str(index + 1) if step.kind == CASCADE else "-",
        what,
        target,
        f"{step.mean_spearman:.3f}",
        f"{step.median_spearman:.3f}",
        f"{step.mean_ssim:.3f}",
        f"{step.unchanged_fraction(check.thresholds.unchanged_spearman):.0%}",
    ]


def text_table(check: SanityCheck) -> str:
    """The terminal report: one row per cascade step (cumulative, top down), then the verdict."""
    limits = check.thresholds
    lines = [
        f"method: {check.method}, target layer: {printable(', '.join(check.target_layers))}, images: {check.images}",
        f"thresholds: mean Spearman at the deepest step <= {limits.max_spearman}, barely changed "
        f"(Spearman >= {limits.unchanged_spearman}) <= {limits.max_unchanged_fraction:.0%} of the maps",
    ]
    table = [HEADERS] + [_cells(check, i, step) for i, step in enumerate(check.steps)]
    widths = [min(60, max(len(row[i]) for row in table)) for i in range(len(HEADERS))]
    for row in table:
        lines.append("  ".join(cell[: widths[i]].ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    for path, reason in check.skipped[:10]:
        lines.append(printable(f"skipped {path}: {reason}"))
    if len(check.skipped) > 10:
        lines.append(f"... and {len(check.skipped) - 10} more skipped (see --json)")
    lines.append(check.summary_line())
    return "\n".join(lines)


def check_report_path(path: Path) -> None:
    """A ConfigError (exit 2) for a report path that cannot be written: its folder is missing, or it is a
    folder. Checked before the model work, so a typo does not cost the whole check."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"report path {path} is a folder; give a file name, e.g. {path / 'sanity.json'}.")
    if not path.parent.is_dir():
        raise ConfigError(f"the folder of report path {path} does not exist; create {path.parent} first.")


def write_json(check: SanityCheck, path: Path) -> None:
    text = json.dumps(check.as_dict(), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    atomic_write_bytes(Path(path), text.encode() + b"\n")


def write_junit(check: SanityCheck, path: Path) -> None:
    """JUnit XML: one testcase per step; the deepest cascade step carries the verdict (<failure> when flagged),
    the others report their measures. Text goes through `printable`, which also keeps it valid XML 1.0."""
    suites = ET.Element("testsuites", name="gradcam sanity", tests=str(len(check.steps)))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="gradcam-sanity",
        tests=str(len(check.steps)),
        failures=str(int(check.flagged)),
        errors="0",
        skipped="0",
        time="0",
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in check.thresholds.model_dump(mode="json").items():
        ET.SubElement(properties, "property", name=key, value=json.dumps(value))
    ET.SubElement(properties, "property", name="method", value=printable(check.method))
    for index, step in enumerate(check.steps):
        cells = _cells(check, index, step)
        name = f"{index + 1:02d} {step.name}" if step.kind == CASCADE else step.name
        case = ET.SubElement(suite, "testcase", classname=f"gradcam.sanity.{check.method}", name=printable(name))
        case.set("time", "0")
        reached = "n/a" if step.kind == RANDOM_CLASS else ("yes" if step.reaches_target else "no")
        detail = (
            f"re-initialised: {printable(', '.join(step.randomised) or 'nothing')}; target layer reached: {reached}; "
        )
        detail += ", ".join(f"{h}={c}" for h, c in zip(HEADERS[3:], cells[3:], strict=True))
        if step is check.deepest and check.flagged:
            failure = ET.SubElement(case, "failure", type="flagged", message="; ".join(check.reasons())[:500])
            failure.text = check.summary_line() + "\n" + detail
        else:
            ET.SubElement(case, "system-out").text = detail
    ET.indent(suites)
    atomic_write_bytes(Path(path), ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n")
