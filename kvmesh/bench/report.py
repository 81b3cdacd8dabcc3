"""Printing benchmark tables, and saving them under benchmarks/results/."""

from __future__ import annotations

import json
import time
from pathlib import Path

RESULTS_DIR = Path("benchmarks/results")


class Table:
    def __init__(self, name: str, columns: list[str]) -> None:
        self.name = name
        self.columns = columns
        self.rows: list[list] = []
        self.notes: list[str] = []

    def add(self, *cells) -> None:
        self.rows.append(list(cells))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines + [f"\n{n}" for n in self.notes])

    def emit(self) -> None:
        """Print as a text table and save JSON + Markdown beside earlier results."""
        cells = [self.columns] + [[_fmt(c) for c in row] for row in self.rows]
        widths = [max(len(str(r[i])) for r in cells) for i in range(len(self.columns))]
        print(f"\n== {self.name} ==")
        for n, row in enumerate(cells):
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
            if n == 0:
                print("  ".join("-" * w for w in widths))
        for note in self.notes:
            print(f"  ({note})")
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"{self.name}.json").write_text(json.dumps(
            {"name": self.name, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "columns": self.columns,
             "rows": self.rows, "notes": self.notes}, indent=1, default=str))
        (RESULTS_DIR / f"{self.name}.md").write_text(self.markdown() + "\n")


def _fmt(cell) -> str:
    if isinstance(cell, float):
        return f"{cell:.3g}" if abs(cell) < 1000 else f"{cell:,.0f}"
    return str(cell)
