"""``compare``: one program on several targets (and, optionally, several pipelines)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from tabulate import tabulate

from passes import pipeline as pl

from ..graph.gcpause import paused_gc
from ..pricing.estimate import Estimate
from ..pricing.price import estimate
from ..report.units import fmt_bytes, fmt_seconds


@dataclass(frozen=True)
class Comparison:
    estimates: tuple[Estimate, ...]

    def rows(self) -> list[dict[str, Any]]:
        base = self.estimates[0].seconds if self.estimates else 0.0
        out = []
        for e in self.estimates:
            row = e.summary()
            row["speedup_vs_first"] = base / e.seconds if e.seconds else float("inf")
            out.append(row)
        return out

    def best(self, column: str = "seconds") -> dict[str, Any]:
        return min(self.rows(), key=lambda r: (r[column], r["target"], r["pipeline"]))

    def table(self) -> str:
        rows = self.rows()
        show_pipe = len({r["pipeline"] for r in rows}) > 1
        body = []
        for r in rows:
            line = [r["target"]] + ([r["pipeline"] or "(none)"] if show_pipe else []) + [
                fmt_seconds(r["seconds"]), f"{r['speedup_vs_first']:.2f}x", fmt_seconds(r["compute_seconds"]),
                fmt_seconds(r["memory_seconds"]), fmt_seconds(r["comm_seconds"]), fmt_seconds(r["overhead_seconds"]),
                r["bound"], f"{r['mfu']:.1%}", fmt_bytes(r["peak_memory_bytes"]),
                "yes" if r["fits_in_memory"] else "NO"]
            body.append(line)
        headers = ["target"] + (["pipeline"] if show_pipe else []) + [
            "time", "speedup", "compute-bound", "memory-bound", "comm-bound", "overhead", "bound", "MFU", "peak mem",
            "fits"]
        unknown = self.estimates[0].unknown_ops if self.estimates else {}
        foot = ("(compute-/memory-/comm-bound: the time of the kernels each resource bounds, not how long it was busy)\n"
                "unknown ops: " + (", ".join(f"{k} x{v}" for k, v in unknown.items()) or "none"))
        title = f"program: {self.estimates[0].program}\n" if self.estimates else ""
        return title + tabulate(body, headers=headers, disable_numparse=True) + "\n" + foot

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows()}

    def _repr_html_(self) -> str:
        rows = self.rows()
        return tabulate([[r["target"], r["pipeline"], fmt_seconds(r["seconds"]), r["bound"], f"{r['mfu']:.1%}"] for r in rows],
                        headers=["target", "pipeline", "time", "bound", "MFU"], tablefmt="html")

    def __str__(self) -> str:
        return self.table()


def compare(program, targets: Sequence[Any], pipeline: str | Sequence[Any] | None = "default",
            pipelines: Sequence[str | Sequence[Any] | None] | None = None, strict: bool = False) -> Comparison:
    """Estimate ``program`` on every target (x every pipeline in ``pipelines`` when given)."""
    pipes = list(pipelines) if pipelines is not None else [pipeline]
    ests = [estimate(program, t, pipeline=p, strict=strict) for t in targets for p in pipes]
    return Comparison(tuple(ests))


def compare_alternatives(program, target, pipeline: str | Sequence[Any] = "fuse{strategy=xla}",
                         strict: bool = False) -> Comparison:
    """Every single-pass alternative of ``pipeline`` on one target: for each pass, each instance its
    ``alternatives()`` lists replaces it in turn (the explorer, not the pass, iterates). The first row is
    ``pipeline`` itself."""
    base = pl.resolve(pipeline)
    variants: list[list] = [base]
    for i, p in enumerate(base):
        for alt in (p.alternatives() if hasattr(p, "alternatives") else []):
            candidate = base[:i] + [alt] + base[i + 1:]
            if candidate not in variants:
                variants.append(candidate)
    with paused_gc():      # one estimate after another of the whole program: no collector walks in between
        return Comparison(tuple(estimate(program, target, pipeline=v, strict=strict) for v in variants))
