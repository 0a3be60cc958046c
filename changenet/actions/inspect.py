"""`changenet inspect FILE`: the table of what a model file is (changenet/deploy/inspection.py)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from changenet.console import console
from changenet.deploy.inspection import ModelFileReport

ROWS = (("kind", "kind"), ("task", "task"), ("backbone", "backbone"), ("classes", "num_classes"),
        ("input size", "input_size"), ("inputs", "input_names"), ("outputs", "output_names"), ("batch", "batch"),
        ("precision", "precision"), ("TensorRT", "tensorrt"), ("compute capabilities", "compute_capabilities"),
        ("made from", "source"), ("sha256", "sha256"), ("sidecar", "sidecar"))


def print_report(report: ModelFileReport) -> None:
    table = Table(title=escape(report.path), show_header=False)
    table.add_column("")
    table.add_column("")
    for label, key in ROWS:
        value = getattr(report, key)
        if value in (None, [], ""):
            continue
        table.add_row(label, escape(_text(key, value)))
    table.add_row("runs here", escape(("yes: " if report.runnable else "") + report.reason))
    console.print(table)


def _text(key: str, value: object) -> str:
    if key == "input_size":
        return "x".join(str(v) for v in value)  # type: ignore[union-attr]
    if key == "compute_capabilities":
        return ", ".join(f"SM{c}" for c in value)  # type: ignore[union-attr]
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
