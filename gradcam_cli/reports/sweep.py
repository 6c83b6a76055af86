"""`gradcam sweep`: which method and target layer explain this model best, by the faithfulness metrics (no torch).

The model work is in runner/sweep.py; this module holds the ranking and its reports: a terminal table,
Markdown, JSON, a self-contained HTML page in the gallery's style, and the YAML snippet of the winner.

The ranking rule: each explained map gets the score

    score = sum of the metrics, each signed so that higher is better   (default: insertion - deletion)

(`deletion` and `road_most` count negatively, `insertion`, `confidence_change` and `road_least` positively;
every one is a probability or an area under a probability curve, so they share a scale). A combination's
score is the mean over its maps; the highest ranks first; ties (equal to 4 decimals) go to the one with
fewer extra forward passes, then to the order given (never to the measured speed: reruns pick the same).
The standard error of that mean is shown beside it: two combinations closer than about two standard
errors are not told apart by this sample.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import math
import re
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from gradcam_cli import __version__
from gradcam_cli.errors import ConfigError
from gradcam_cli.io.encode import jpeg_preview
from gradcam_cli.io.files import atomic_write_bytes
from gradcam_cli.io.overlay import blend
from gradcam_cli.reports.compare_formats import printable
from gradcam_cli.reports.page import read_template

SCHEMA_VERSION = 1
TABLE_ROWS = 40  # terminal and Markdown
EXAMPLE_SIDE = 128  # pixels of an example map on the HTML page


def score_of(values: dict[str, float], higher_is_better: dict[str, bool]) -> float:
    """The ranking score of one map: its metrics, each signed so that higher is better, summed."""
    return sum(value if higher_is_better[name] else -value for name, value in values.items())


def rule_text(metrics: tuple[str, ...], higher_is_better: dict[str, bool]) -> str:
    """The score in words: `insertion - deletion` for the default metrics."""
    ordered = sorted(metrics, key=lambda name: not higher_is_better[name])  # the positive terms first
    text = ""
    for index, name in enumerate(ordered):
        sign = "" if higher_is_better[name] else "-"
        text += (f" {'+' if not sign else '-'} " if index else sign) + name
    return text


@dataclass(frozen=True, eq=False)
class Entry:
    """One method x target layer combination: its metrics over the sample and its cost."""

    method: str
    layers: tuple[str, ...]  # the target layers, resolved (auto's pick by name); several: averaged
    given: str  # the --layers entry as given ("auto", "layer3+layer4")
    metrics: dict[str, float]  # mean per metric over the maps
    scores: tuple[float, ...]  # the ranking score of every map
    images_per_second: float  # this combination alone, as `gradcam run` computes it (CAMs, no metrics)
    extra_passes: float  # forward passes per image beyond the one forward (score methods, aug_smooth)
    blank: int = 0  # maps that were empty, flat or not finite
    example_maps: tuple[np.ndarray, ...] = ()  # (H, W) uint8 at the model input size, for the HTML page

    @property
    def score(self) -> float:
        return statistics.fmean(self.scores) if self.scores else -math.inf

    @property
    def stderr(self) -> float:
        if len(self.scores) < 2:
            return 0.0
        return statistics.stdev(self.scores) / math.sqrt(len(self.scores))

    @property
    def layer_label(self) -> str:
        names = "+".join(self.layers)
        return names if self.given == names else f"{self.given} ({names})"

    @property
    def target_layer(self) -> str | list[str]:
        """`model.target_layer` as the config writes it."""
        return self.layers[0] if len(self.layers) == 1 else list(self.layers)


SCORE_DECIMALS = 4  # scores equal to 4 decimals tie: the same map by two rules differs by float rounding (1e-6)


def ranked(entries: list[Entry]) -> list[Entry]:
    """Best first: the highest mean score (to SCORE_DECIMALS), then fewer extra forward passes, then the
    order given; never the measured speed, so the same sweep always picks the same winner."""
    order = {id(entry): index for index, entry in enumerate(entries)}
    return sorted(entries, key=lambda e: (-round(e.score, SCORE_DECIMALS), e.extra_passes, order[id(e)]))


@dataclass
class Sweep:
    """The whole sweep: its entries ranked best first, and what they were measured on."""

    entries: list[Entry]  # ranked(), best first
    metrics: tuple[str, ...]
    higher_is_better: dict[str, bool]
    metric_steps: int
    images: int
    maps: int  # explained maps per combination (images x explained classes)
    metric_passes: float  # extra forward passes per map that the metrics cost, per combination
    seconds: float  # wall time of the whole sweep
    model: dict[str, Any] = field(default_factory=dict)
    setting: dict[str, Any] = field(default_factory=dict)  # targets, device, precision, batch size, aug_smooth
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    example_paths: list[str] = field(default_factory=list)
    example_pixels: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) uint8 model inputs

    @property
    def best(self) -> Entry:
        return self.entries[0]

    @property
    def rule(self) -> str:
        return rule_text(self.metrics, self.higher_is_better)

    def summary_line(self) -> str:
        best = self.best
        return (
            f"best: {best.method} on {best.layer_label} ({self.rule} = {best.score:.3f} +/- {best.stderr:.3f}, "
            f"{len(self.entries)} combinations on {self.images} images)"
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON report: every combination ranked, with its metrics and cost, and the winner's snippet."""
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "gradcam-cli", "version": __version__, "command": "sweep"},
            "model": self.model,
            "setting": self.setting,
            "images": self.images,
            "maps_per_combination": self.maps,
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped],
            "metrics": {
                "names": list(self.metrics),
                "steps": self.metric_steps,
                "higher_is_better": {name: self.higher_is_better[name] for name in self.metrics},
                "passes_per_map": self.metric_passes,
            },
            "rule": (
                f"score = mean over maps of ({self.rule}); higher is better; "
                "ties: fewer extra passes, then the order given"
            ),
            "seconds": round(self.seconds, 3),
            "ranking": [
                {
                    "rank": rank,
                    "method": entry.method,
                    "target_layer": entry.target_layer,
                    "given": entry.given,
                    "score": _finite(entry.score),
                    "score_stderr": _finite(entry.stderr),
                    "metrics": {name: _finite(value) for name, value in entry.metrics.items()},
                    "images_per_second": _finite(entry.images_per_second),
                    "extra_passes_per_image": _finite(entry.extra_passes),
                    "blank_maps": entry.blank,
                }
                for rank, entry in enumerate(self.entries, start=1)
            ],
            "best": {"method": self.best.method, "target_layer": self.best.target_layer},
            "snippet": config_snippet(self),
        }


def _finite(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


def config_snippet(sweep: Sweep) -> str:
    """The winner as YAML for the user's config: `model.target_layer` and `cam.method`, merged over theirs."""
    best = sweep.best
    body = yaml.safe_dump(
        {"model": {"target_layer": best.target_layer}, "cam": {"method": best.method}},
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
    )
    comment = printable(
        f"# gradcam sweep: best of {len(sweep.entries)} combinations on {sweep.images} images by {sweep.rule} "
        f"({best.score:.3f} +/- {best.stderr:.3f})"
    )
    note = f"# --layers {printable(best.given)}: auto's pick\n" if best.given == "auto" else ""
    return f"{comment}\n{note}{body}"


# terminal / Markdown ------------------------------------------------------------------------------------------


def _headers(sweep: Sweep) -> list[str]:
    arrows = [f"{name} {'↑' if sweep.higher_is_better[name] else '↓'}" for name in sweep.metrics]
    return ["rank", "method", "target layer", f"score: {sweep.rule}", *arrows, "img/s", "extra passes/img", "blank"]


def _cells(rank: int, entry: Entry, sweep: Sweep) -> list[str]:
    return [
        str(rank),
        printable(entry.method),
        printable(entry.layer_label),
        f"{entry.score:.3f} +/- {entry.stderr:.3f}",
        *(f"{entry.metrics[name]:.3f}" for name in sweep.metrics),
        f"{entry.images_per_second:.1f}",
        f"{entry.extra_passes:g}",
        str(entry.blank),
    ]


def text_table(sweep: Sweep, rows: int = TABLE_ROWS) -> str:
    """The terminal report: the ranking, best first, then the winner and its config snippet."""
    lines = [
        f"{len(sweep.entries)} combinations on {sweep.images} images ({sweep.maps} maps each); "
        f"metrics {', '.join(sweep.metrics)} ({sweep.metric_passes:g} extra passes per map); "
        f"ranked by {sweep.rule} (higher is better)",
    ]
    table = [_headers(sweep)] + [_cells(i, e, sweep) for i, e in enumerate(sweep.entries[:rows], start=1)]
    widths = [min(48, max(len(row[i]) for row in table)) for i in range(len(table[0]))]
    for row in table:
        lines.append("  ".join(cell[: widths[i]].ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    if len(sweep.entries) > rows:
        lines.append(f"... and {len(sweep.entries) - rows} more (see --json)")
    for path, reason in sweep.skipped[:10]:
        lines.append(printable(f"skipped {path}: {reason}"))
    lines += [sweep.summary_line(), "", config_snippet(sweep).rstrip()]
    return "\n".join(lines)


def _md(text: str) -> str:
    """Table-cell text that cannot close the cell or start Markdown/HTML (layer names are the model's)."""
    escaped = html.escape(printable(text.replace("\n", " ")), quote=False)
    return re.sub(r"([\\`*_\[\]()!#|~<>])", r"\\\1", escaped)


def markdown(sweep: Sweep, rows: int = TABLE_ROWS) -> str:
    """A short summary for a pull request or a notebook: the ranking and the winner's snippet."""
    best = sweep.best
    lines = [
        f"### Grad-CAM sweep: {_md(best.method)} on {_md(best.layer_label)} explains best",
        "",
        f"{len(sweep.entries)} combinations on {sweep.images} images, ranked by {_md(sweep.rule)} "
        f"(mean over maps, higher is better; +/- one standard error).",
        "",
        "| " + " | ".join(_md(h) for h in _headers(sweep)) + " |",
        "|" + "---|" * len(_headers(sweep)),
    ]
    for rank, entry in enumerate(sweep.entries[:rows], start=1):
        lines.append("| " + " | ".join(_md(cell) for cell in _cells(rank, entry, sweep)) + " |")
    if len(sweep.entries) > rows:
        lines.append(f"\n... and {len(sweep.entries) - rows} more in the JSON report.")
    lines += ["", "```yaml", config_snippet(sweep).rstrip().replace("```", "'''"), "```"]
    lines.append(f"\n<sub>gradcam-cli {__version__} sweep</sub>")
    return "\n".join(lines) + "\n"


# HTML -------------------------------------------------------------------------------------------------------


def _example_uri(pixels: np.ndarray, heatmap: np.ndarray) -> str | None:
    """An overlay of a map on its model input, as a JPEG data URI."""
    try:
        overlay = blend(pixels, heatmap, "jet", 0.5)
        encoded = jpeg_preview(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR), EXAMPLE_SIDE)
    except (ValueError, cv2.error):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(encoded).decode()


def _bar(entry: Entry, low: float, high: float) -> str:
    span = high - low
    share = 1.0 if span <= 0 else (entry.score - low) / span
    return f'<span class="bar"><span style="width:{max(2.0, 100 * share):.1f}%"></span></span>'


def _row(rank: int, entry: Entry, sweep: Sweep, low: float, high: float) -> str:
    cells = _cells(rank, entry, sweep)
    tds = [f'<td class="num">{cells[0]}</td>', f"<td>{html.escape(cells[1])}</td>"]
    tds.append(f'<td class="mono">{html.escape(cells[2])}</td>')
    tds.append(f'<td class="num">{html.escape(cells[3])} {_bar(entry, low, high)}</td>')
    tds += [f'<td class="num">{html.escape(cell)}</td>' for cell in cells[4:]]
    best = ' class="best"' if rank == 1 else ""
    return f"<tr{best}>" + "".join(tds) + "</tr>"


def _examples(sweep: Sweep) -> str:
    if not sweep.example_pixels or not any(entry.example_maps for entry in sweep.entries):
        return ""
    head = "".join(f'<th class="mono">{html.escape(printable(path))}</th>' for path in sweep.example_paths)
    rows = []
    for rank, entry in enumerate(sweep.entries, start=1):
        figures = []
        for pixels, heatmap in zip(sweep.example_pixels, entry.example_maps, strict=False):
            uri = _example_uri(pixels, heatmap)
            alt = html.escape(printable(f"{entry.method} on {entry.layer_label}"))
            figures.append(f'<td><img src="{uri}" alt="{alt}"></td>' if uri else "<td>-</td>")
        label = html.escape(printable(f"{rank}. {entry.method} on {entry.layer_label}"))
        rows.append(f'<tr><th class="mono">{label}</th>{"".join(figures)}</tr>')
    return (
        '<section class="examples"><h2>The maps on the first images (model input, jet overlay)</h2>'
        f'<table class="maps"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></section>'
    )


def _header(sweep: Sweep) -> str:
    best = sweep.best
    setting = sweep.setting
    facts = [
        ("Model", sweep.model.get("source")),
        ("Targets", setting.get("targets")),
        ("Device", " · ".join(str(v) for v in (setting.get("device"), setting.get("precision")) if v)),
        ("Metrics", f"{', '.join(sweep.metrics)} ({sweep.metric_steps} steps)"),
        ("Rule", f"{sweep.rule}, mean over maps, higher is better"),
        ("Took", f"{sweep.seconds:.1f} s"),
        ("Tool", f"gradcam-cli {__version__}"),
    ]
    items = "".join(
        f"<div><dt>{html.escape(name)}</dt><dd>{html.escape(printable(value))}</dd></div>"
        for name, value in facts
        if value not in (None, "")
    )
    counts = [("combinations", len(sweep.entries)), ("images", sweep.images), ("skipped", len(sweep.skipped))]
    badges = "".join(f'<span class="count"><b>{value:,}</b> {name}</span>' for name, value in counts)
    title = html.escape(printable(f"{best.method} on {best.layer_label}"))
    return (
        f'<h1>Grad-CAM sweep <span class="dir">best: {title}</span></h1>'
        f'<div class="counts">{badges}</div><dl class="facts">{items}</dl>'
    )


def html_page(sweep: Sweep) -> str:
    """One self-contained file (example maps embedded as data URIs; no scripts, no network)."""
    scores = [entry.score for entry in sweep.entries if math.isfinite(entry.score)]
    low, high = (min(scores), max(scores)) if scores else (0.0, 0.0)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _headers(sweep))
    rows = "".join(_row(rank, e, sweep, low, high) for rank, e in enumerate(sweep.entries, start=1))
    skipped = "".join(f"<li>{html.escape(printable(f'{p}: {r}'))}</li>" for p, r in sweep.skipped[:50])
    body = (
        f'<section><h2>Ranking</h2><p class="sub">{html.escape(sweep.summary_line())}</p>'
        f'<table class="ranking"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></section>'
        f"<section><h2>Config snippet for the winner</h2><pre>{html.escape(config_snippet(sweep))}</pre></section>"
        + _examples(sweep)
        + (f"<section><h2>Skipped images</h2><ul>{skipped}</ul></section>" if skipped else "")
    )
    template = read_template("sweep.html")
    values = {
        "TITLE": html.escape(printable(f"Grad-CAM sweep: {sweep.best.method} on {sweep.best.layer_label}")),
        "HEADER": _header(sweep),
        "BODY": body,
    }
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda match: values[match.group(1)], template)


# files ------------------------------------------------------------------------------------------------------

OUT_FILES = {"json": "sweep.json", "markdown": "sweep.md", "html": "sweep.html", "snippet": "best.yaml"}


def check_report_path(path: Path) -> None:
    """A ConfigError (exit 2) for a report file that cannot be written, checked before the model work."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"report path {path} is a folder; give a file name, e.g. {path / 'sweep.json'}.")
    if not path.parent.is_dir():
        raise ConfigError(f"the folder of report path {path} does not exist; create {path.parent} first.")


def check_out_dir(path: Path) -> None:
    """--out DIR: a folder (made when missing, with its parents, once the sweep has results) that is not a
    file and can be made and written: tried before the model work, and what the try made is removed again,
    so a bad one costs nothing and a refused sweep leaves nothing behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file; give a folder for the sweep's reports.")
    made = [folder for folder in (path, *path.parents) if not folder.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = exc.strerror or exc
        raise ConfigError(f"--out {path} cannot be written ({reason}); give a folder you can write.") from None
    finally:
        for folder in made:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()


def write_json(sweep: Sweep, path: Path) -> None:
    text = json.dumps(sweep.as_dict(), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    atomic_write_bytes(Path(path), text.encode() + b"\n")


def write_markdown(sweep: Sweep, path: Path) -> None:
    atomic_write_bytes(Path(path), markdown(sweep).encode())


def write_html(sweep: Sweep, path: Path) -> None:
    atomic_write_bytes(Path(path), html_page(sweep).encode())


def write_snippet(sweep: Sweep, path: Path) -> None:
    atomic_write_bytes(Path(path), config_snippet(sweep).encode())


WRITERS = {"json": write_json, "markdown": write_markdown, "html": write_html, "snippet": write_snippet}


def write_reports(sweep: Sweep, files: dict[str, Path | None], out_dir: Path | None = None) -> list[Path]:
    """The reports asked for: each kind to its own file, and with `out_dir` all four there (OUT_FILES).
    Returns the paths written."""
    targets: list[tuple[str, Path]] = [(kind, Path(path)) for kind, path in files.items() if path is not None]
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        targets += [(kind, Path(out_dir) / name) for kind, name in OUT_FILES.items()]
    for kind, path in targets:
        WRITERS[kind](sweep, path)
    return [path for _, path in targets]
