"""io/metric_summary.py: the manifest's statistics of cam.metrics, and the Grad-CAM++ paper's two numbers."""

from __future__ import annotations

import numpy as np
import pytest

from gradcam_cli.io.metric_summary import average_drop, describe, increase_in_confidence, metric_summary


def test_describe_matches_numpy() -> None:
    values = [0.9, 0.1, 0.4, 0.35, 0.8, 0.2, 0.55]
    stats = describe(values)
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    assert stats["count"] == 7 and stats["mean"] == pytest.approx(np.mean(values), abs=1e-6)
    assert (stats["q1"], stats["median"], stats["q3"]) == pytest.approx((q1, median, q3), abs=1e-6)
    assert (stats["min"], stats["max"]) == (0.1, 0.9)
    assert describe([0.25]) | {} == {
        "count": 1,
        "mean": 0.25,
        "median": 0.25,
        "q1": 0.25,
        "q3": 0.25,
        "min": 0.25,
        "max": 0.25,
    }
    assert describe([]) == {"count": 0, "mean": None, "median": None, "q1": None, "q3": None, "min": None, "max": None}


def _record(*cams: dict, status: str = "ok") -> dict:
    return {"status": status, "cams": list(cams)}


def test_summary_over_every_cam_of_the_ok_records() -> None:
    records = [
        _record(
            {"score": 0.8, "metrics": {"deletion": 0.2, "confidence_change": -0.4}},
            {"score": 0.1, "metrics": {"deletion": 0.4, "confidence_change": 0.05}},
        ),
        _record({"score": 0.5, "metrics": {"deletion": None, "confidence_change": 0.0}}),  # not finite: None
        _record({"score": 0.9, "metrics": {"deletion": 0.9}}, status="error"),  # failed images do not count
        _record({"score": 0.9}),  # a record written without metrics
    ]
    summary = metric_summary(records, ["deletion", "confidence_change"])
    assert summary["deletion"]["count"] == 2 and summary["deletion"]["missing"] == 2
    assert summary["deletion"]["mean"] == pytest.approx(0.3)
    changes = summary["confidence_change"]
    assert changes["count"] == 3 and changes["missing"] == 1
    assert changes["average_drop"] == pytest.approx((0.4 / 0.8 + 0 + 0) / 3, abs=1e-6)
    assert changes["increase_in_confidence"] == pytest.approx(1 / 3, abs=1e-6)


def test_average_drop_and_increase_follow_the_paper() -> None:
    """Grad-CAM++ (Chattopadhyay et al.): drop = max(0, Y - O) / Y averaged; increase = share with O > Y."""
    base, changes = [0.5, 0.8, 0.2], [-0.25, 0.1, -0.2]  # O = 0.25, 0.9, 0.0
    assert average_drop(changes, base) == pytest.approx((0.5 + 0 + 1.0) / 3, abs=1e-6)
    assert increase_in_confidence(changes) == pytest.approx(1 / 3)
    assert average_drop([], []) == 0.0 and increase_in_confidence([]) == 0.0


def test_no_finite_confidence_change_is_null_not_zero() -> None:
    summary = metric_summary([_record({"score": 0.5, "metrics": {"confidence_change": None}})], ["confidence_change"])
    changes = summary["confidence_change"]
    assert changes["mean"] is None and changes["average_drop"] is None and changes["increase_in_confidence"] is None
