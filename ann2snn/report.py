"""Results as data: per-step accuracy listings and t × (t + extra_t) tables as Markdown, CSV, JSON.

All accuracies are percentages.  Plots (ann2snn.plots) are drawn from the same dicts.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def format_steps(result: dict[str, Any]) -> str:
    ann, snn = result["ann"], result["snn"]
    t, e = snn["t"], snn["extra_t"]
    lines = [f"ANN   top-1 {ann['top1']:6.2f}%   top-5 {ann['top5']:6.2f}%   ({result.get('n', '?')} test samples)",
             f"SNN   preset {snn.get('preset', '?')}, t = {t}, extra_t = {e}  (input for t steps, then zeros)",
             "  step   top-1    top-5   Δtop-1 vs ANN"]
    for k, (a1, a5) in enumerate(zip(snn["top1"], snn["top5"]), 1):
        mark = "" if k <= t else "  (extra)"
        lines.append(f"  {k:4d}  {a1:6.2f}%  {a5:6.2f}%   {a1 - ann['top1']:+6.2f}{mark}")
    return "\n".join(lines)


def print_steps(result: dict[str, Any]) -> None:
    print(format_steps(result))


def table_grid(table: dict[int, dict], extras: list[int]) -> tuple[list[int], list[int], dict]:
    """(rows, columns, {(t, col): top1}) keeping only the requested extra steps."""
    cells = {}
    for t, row in table.items():
        for col, acc in zip(row["cols"], row["top1"]):
            if col - t in extras:
                cells[(t, col)] = acc
    rows = sorted(table)
    cols = sorted({c for (_, c) in cells})
    return rows, cols, cells


def table_markdown(ann: dict, table: dict[int, dict], extras: list[int], title: str = "") -> str:
    rows, cols, cells = table_grid(table, extras)
    head = "| t \\ t+extra_t | " + " | ".join(str(c) for c in cols) + " |"
    sep = "|---" * (len(cols) + 1) + "|"
    body = []
    for t in rows:
        body.append(f"| {t} | " + " | ".join(f"{cells[(t, c)]:.2f}" if (t, c) in cells else "" for c in cols) + " |")
    top = f"{title}\n\n" if title else ""
    return (f"{top}ANN top-1: {ann['top1']:.2f}% (top-5 {ann['top5']:.2f}%). SNN top-1 (%), rows t (input "
            f"steps), columns t + extra_t (total steps):\n\n" + "\n".join([head, sep, *body]) + "\n")


def write_table(out: Path, ann: dict, table: dict[int, dict], extras: list[int], meta: dict | None = None,
                echo: bool = True) -> dict[str, Path]:
    """Write table.md / table.csv / table.json into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = table_markdown(ann, table, extras, title=f"# Accuracy table ({(meta or {}).get('preset', '')})")
    paths = {"md": out / "table.md", "csv": out / "table.csv", "json": out / "table.json"}
    paths["md"].write_text(md)
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "extra_t", "steps", "top1", "top5", "loss"])
        for t, row in sorted(table.items()):
            for col, a1, a5, loss in zip(row["cols"], row["top1"], row["top5"], row["loss"]):
                if col - t in extras:
                    w.writerow([t, col - t, col, f"{a1:.2f}", f"{a5:.2f}", f"{loss:.4f}"])
    payload = {"ann": ann, "rows": {str(t): row for t, row in sorted(table.items())}, "extras": extras,
               **(meta or {})}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    if echo:
        print(md)
        print(f"written: {paths['md']}, {paths['csv']}, {paths['json']}")
    return paths
