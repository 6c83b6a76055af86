"""The manifest's summary of the faithfulness metrics (cam.metrics): per metric over every explained class
of the folder's ok records, its count, mean, median, quartiles and range; for `confidence_change` also the
Grad-CAM++ paper's average drop and increase in confidence. Plain Python: no torch here (the manifest of
a rerun with nothing new is written without it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def average_drop(changes: list[float], base: list[float]) -> float:
    """Grad-CAM++'s average drop, as a fraction (x100 for the paper's %): mean of max(0, Y - O) / Y, where Y
    is the class probability on the image and O = Y + confidence_change that on the CAM-multiplied image."""
    return sum(max(0.0, -c) / (y + 1e-7) for c, y in zip(changes, base, strict=True)) / max(1, len(changes))


def increase_in_confidence(changes: list[float]) -> float:
    """Grad-CAM++'s increase in confidence, as a fraction: how often the CAM-multiplied image scores higher."""
    return sum(1 for c in changes if c > 0) / max(1, len(changes))


def describe(values: list[float]) -> dict[str, Any]:
    """count, mean, median, q1, q3 (numpy's linear rule), min and max, rounded to 6 digits; None when empty."""
    if not values:
        return dict.fromkeys(("mean", "median", "q1", "q3", "min", "max"), None) | {"count": 0}
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    stats = {
        "mean": statistics.fmean(values),
        "median": median,
        "q1": q1,
        "q3": q3,
        "min": min(values),
        "max": max(values),
    }
    return {key: round(value, 6) for key, value in stats.items()} | {"count": len(values)}


def metric_summary(records: Iterable[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per metric name, `describe` of its values over the cams of the ok records (a value that is missing
    or not finite is left out and counted in `missing`)."""
    values: dict[str, list[float]] = {name: [] for name in names}
    missing = dict.fromkeys(names, 0)
    changes: list[float] = []
    base: list[float] = []
    for record in records:
        if not isinstance(record, dict) or record.get("status") != "ok":
            continue
        for cam in record.get("cams") or []:
            metrics = cam.get("metrics") if isinstance(cam, dict) else None
            metrics = metrics if isinstance(metrics, dict) else {}
            for name in names:
                value = _number(metrics.get(name))
                if value is None:
                    missing[name] += 1
                    continue
                values[name].append(value)
                score = _number(cam.get("score"))
                if name == "confidence_change" and score is not None:
                    changes.append(value)
                    base.append(score)
    summary = {name: describe(values[name]) | {"missing": missing[name]} for name in names}
    if "confidence_change" in summary:
        summary["confidence_change"]["average_drop"] = round(average_drop(changes, base), 6) if changes else None
        summary["confidence_change"]["increase_in_confidence"] = (
            round(increase_in_confidence(changes), 6) if changes else None  # no value: null, as the mean
        )
    return summary
