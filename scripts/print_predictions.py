"""Print each image's top prediction from a finished run's manifest, as a small table (`make demo` uses it).

Usage:
    .venv/bin/python scripts/print_predictions.py demo-out/photos
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(manifest: dict) -> list[str]:
    rows = [("image", "top-1", "probability")]
    for record in manifest["images"]:
        if record["status"] == "ok" and record["predictions"]:
            best = record["predictions"][0]
            rows.append((record["path"], best["label"], f"{best['score']:.3f}"))
        else:
            rows.append((record["path"], f"error: {record['error']['type']}", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    manifest = json.loads((Path(argv[0]) / "manifest.json").read_text(encoding="utf-8"))
    print("\n".join(table(manifest)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
