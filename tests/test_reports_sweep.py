"""The sweep's ranking and reports, from synthetic entries (no model): the rule, the order, Markdown, JSON, the
self-contained HTML page, the YAML snippet, and where the files go."""

from __future__ import annotations

import html
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from gradcam_cli.config import parse_config, read_config_file
from gradcam_cli.errors import ConfigError
from gradcam_cli.reports.sweep import (
    OUT_FILES,
    Entry,
    Sweep,
    check_out_dir,
    check_report_path,
    config_snippet,
    html_page,
    markdown,
    ranked,
    rule_text,
    score_of,
    text_table,
    write_reports,
)
from tests.conftest import REPO

BETTER = {"deletion": False, "insertion": True, "confidence_change": True, "road_most": False, "road_least": True}


def _entry(method: str, layers: tuple[str, ...], deletion: float, insertion: float, speed: float = 10.0, **kw) -> Entry:
    scores = tuple(insertion - deletion + d for d in (-0.01, 0.0, 0.01))
    return Entry(
        method,
        layers,
        kw.pop("given", "+".join(layers)),
        {"deletion": deletion, "insertion": insertion},
        scores,
        speed,
        kw.pop("extra", 0.0),
        **kw,
    )


def _sweep(entries: list[Entry], **kw) -> Sweep:
    pixels = np.full((16, 16, 3), 90, np.uint8)
    for entry in entries:
        object.__setattr__(entry, "example_maps", (np.tile(np.arange(16, dtype=np.uint8) * 16, (16, 1)),))
    return Sweep(
        entries=ranked(entries),
        metrics=("deletion", "insertion"),
        higher_is_better={"deletion": False, "insertion": True},
        metric_steps=20,
        images=3,
        maps=3,
        metric_passes=40,
        seconds=1.5,
        model={"source": "factory:demo"},
        setting={"targets": "top1", "device": "cpu", "precision": "fp32"},
        example_paths=["a.png"],
        example_pixels=[pixels],
        **kw,
    )


def test_the_rule_signs_every_metric_so_that_higher_is_better() -> None:
    assert rule_text(("deletion", "insertion"), BETTER) == "insertion - deletion"
    assert rule_text(("road_most", "road_least", "confidence_change"), BETTER) == (
        "road_least + confidence_change - road_most"
    )
    assert rule_text(("deletion",), BETTER) == "-deletion"
    assert score_of({"deletion": 0.2, "insertion": 0.7}, BETTER) == pytest.approx(0.5)
    assert score_of({"road_most": -0.3, "road_least": -0.1}, BETTER) == pytest.approx(0.2)


def test_ranking_is_by_mean_score_then_fewer_passes_then_the_order_given_never_speed() -> None:
    good = _entry("gradcam", ("layer4",), 0.1, 0.8)
    fast_twin = _entry("hirescam", ("layer4",), 0.1, 0.8 + 2e-6, speed=20.0)  # the same map, float rounding
    costly_twin = _entry("scorecam", ("layer4",), 0.1, 0.8, speed=99.0, extra=64.0)
    bad = _entry("inverted", ("layer4",), 0.5, 0.3, speed=99.0)
    order = [bad, costly_twin, good, fast_twin]
    assert [e.method for e in ranked(order)] == ["gradcam", "hirescam", "scorecam", "inverted"]
    assert [e.method for e in ranked([fast_twin, good])] == ["hirescam", "gradcam"]  # the order given
    assert good.score == pytest.approx(0.7) and good.stderr == pytest.approx(0.01 / math.sqrt(3))
    empty = Entry("nothing", ("x",), "x", {}, (), 1.0, 0.0)
    assert ranked([empty, bad])[-1] is empty  # no finite map: last, never NaN first


def test_text_and_markdown_show_the_ranking_and_the_snippet() -> None:
    sweep = _sweep([_entry("gradcam", ("layer4",), 0.1, 0.8), _entry("layercam", ("layer3",), 0.2, 0.7, extra=0)])
    text = text_table(sweep)
    lines = text.splitlines()
    assert lines[1].split()[:4] == ["rank", "method", "target", "layer"]
    assert lines[2].split()[:3] == ["1", "gradcam", "layer4"] and lines[3].split()[:3] == ["2", "layercam", "layer3"]
    assert "best: gradcam on layer4 (insertion - deletion = 0.700" in text and text.endswith("method: gradcam")
    md = markdown(sweep)
    assert md.startswith("### Grad-CAM sweep: gradcam on layer4 explains best")
    assert "| 1 | gradcam | layer4 | 0.700 +/- 0.006 | 0.100 | 0.800 |" in md
    assert "```yaml\n# gradcam sweep" in md


def test_json_report(tmp_path: Path) -> None:
    sweep = _sweep([_entry("gradcam", ("layer4",), 0.1, 0.8), _entry("layercam", ("layer3", "layer4"), 0.2, 0.7)])
    write_reports(sweep, {"json": tmp_path / "s.json", "markdown": None, "html": None, "snippet": None})
    report = json.loads((tmp_path / "s.json").read_text())
    assert [row["rank"] for row in report["ranking"]] == [1, 2]
    assert report["ranking"][1]["target_layer"] == ["layer3", "layer4"]
    assert report["ranking"][0]["metrics"] == {"deletion": 0.1, "insertion": 0.8}
    assert report["best"] == {"method": "gradcam", "target_layer": "layer4"}
    assert report["metrics"]["higher_is_better"] == {"deletion": False, "insertion": True}
    assert "insertion - deletion" in report["rule"] and report["snippet"] == config_snippet(sweep)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


class _Resources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.links += [value or "" for name, value in attrs if name in ("src", "href")]


def test_html_page_is_self_contained_and_escapes_names() -> None:
    hostile = "<img src=x onerror=alert(1)>"
    sweep = _sweep([_entry("gradcam", (hostile,), 0.1, 0.8), _entry("layercam", ("layer3",), 0.3, 0.6)])
    page = html_page(sweep)
    parser = _Resources()
    parser.feed(page)
    assert "script" not in parser.tags and hostile not in page and html.escape(hostile) in page
    assert parser.links and all(link.startswith("data:") for link in parser.links)  # icon and example maps
    assert not re.search(r"https?://", page) and "@import" not in page and "url(" not in page
    assert page.index("gradcam") < page.index("layercam")  # best first
    assert "--accent" in page and 'class="run"' in page  # the gallery's palette and header


def test_snippet_is_yaml_that_merges_into_the_demo_config() -> None:
    for layers in (("features",), ("features.1", "features")):
        sweep = _sweep([_entry("gradcam++", layers, 0.1, 0.8, given="auto" if len(layers) == 1 else "+".join(layers))])
        snippet = config_snippet(sweep)
        parsed = yaml.safe_load(snippet)
        assert parsed == {
            "model": {"target_layer": layers[0] if len(layers) == 1 else list(layers)},
            "cam": {"method": "gradcam++"},
        }
        demo = REPO / "configs" / "demo.yaml"
        data = read_config_file(demo)
        for section, values in parsed.items():
            data[section] = {**data[section], **values}
        config = parse_config(data, demo.parent)
        assert config.cam.method == "gradcam++" and config.model.target_layers == list(layers)
    assert "auto's pick" in config_snippet(_sweep([_entry("gradcam", ("features",), 0.1, 0.8, given="auto")]))


def test_out_dir_gets_all_four_reports_and_bad_paths_are_refused(tmp_path: Path) -> None:
    sweep = _sweep([_entry("gradcam", ("layer4",), 0.1, 0.8)])
    written = write_reports(sweep, {"json": None, "markdown": None, "html": None, "snippet": None}, tmp_path / "a/b")
    assert sorted(p.name for p in written) == sorted(OUT_FILES.values())
    assert sorted(p.name for p in (tmp_path / "a/b").iterdir()) == sorted(OUT_FILES.values())
    assert yaml.safe_load((tmp_path / "a/b/best.yaml").read_text())["cam"]["method"] == "gradcam"
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        check_out_dir(tmp_path / "file")
    with pytest.raises(ConfigError, match="cannot be written"):
        check_out_dir(Path("/proc/no-such-folder/x"))  # found before the model work, not after it
    check_out_dir(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # the check leaves nothing behind
    with pytest.raises(ConfigError, match="does not exist"):
        check_report_path(tmp_path / "missing" / "x.json")
    with pytest.raises(ConfigError, match="is a folder"):
        check_report_path(tmp_path)
