"""``sweep``: price one program on every combination of target knob values.

Two ways to price the variants, chosen honestly:
- **vectorised** when no pass of the pipeline reads a swept knob (each pass says which knobs it
  reads through ``reads_knobs()``; a pass that does not say is assumed to read them all): the
  passes run once, each distinct kernel's work is priced once with the target's figures as numpy
  arrays (one entry per variant), and the totals are summed in the estimate's own order, so every
  row equals ``explorer.estimate`` on that variant bit for bit;
- **vectorised by decision** when passes read swept knobs (the default then): when every such pass
  certifies its decisions (``run_certified``, ``passes.decisions``: ``shard`` does), the passes run on
  one variant and their certificates are checked on all the others as arrays, again on the first
  variant not covered, and so on; otherwise the passes run once per distinct value of the knobs they
  read. Variants whose runs made the same plan (the same decisions) are priced together as arrays;
  rows still equal ``explorer.estimate`` bit for bit;
- **per variant** on request: the passes and the estimate run again on each variant, in worker
  processes (``backend="process"``) or on a Ray cluster (``backend="ray"``), results in variant
  order whatever the order they finish in.

    res = explorer.sweep(prog, hw_targets.load("h100_sxm"),
                         {"memory.hbm.bandwidth_bytes_per_s": [2e12, 3.35e12, 5e12],
                          "compute.matrix_flops_per_s.bf16": [5e14, 9.894e14]})
    print(res.table()); res.best("seconds"); res.pareto(cost="tdp_w")

With ``pipeline_parallel`` (``price_pipeline``'s options) every path prices the pipelined training step of each
variant, on arrays where it is vectorised.
"""
from __future__ import annotations

import copyreg
import dataclasses
import difflib
import io
import itertools
import os
import pickle
import sys
import types
import warnings
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterable, Mapping, Sequence

import hashlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tabulate import tabulate

import hw_targets
from passes import pipeline as pl

from ..pricing.pipeline_parallel import SCHEDULES, pipeline_layout
from ..pricing.price import check_known, estimate
from ..graph.gcpause import paused_gc
from ..model.collectives import unread_network_knobs
from ..model.variants import ArrayTarget, Sections
from ..pricing.vectorised import COST_COLUMNS, pipelined_columns, price_variants
from ..report import plots
from ..report.units import fmt_seconds

FIGURES = ("seconds", "compute_seconds", "memory_seconds", "comm_seconds", "overhead_seconds")
# knob-independent figures, the same in every row of a vectorised sweep
PROGRAM_COLUMNS = ("flops", "bytes_accessed", "kernels", "peak_memory_bytes")
BACKENDS = ("auto", "vector", "grouped", "process", "ray")
_PARTS = ("compute", "memory", "communication", "overhead")


class SweepError(ValueError):
    """A bad grid or option: the message names the knob / option and the bad value."""


class SweepWarning(UserWarning):
    """A result that is valid but probably not what was asked (a Pareto front over a cost that never varies)."""


# -- variants ---------------------------------------------------------------------------------
def grid_variants(base, grid: Mapping[str, Sequence[float]] | Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
    """The variants of ``grid``: a mapping knob -> values (every combination, the last knob varying
    fastest) or an explicit sequence of {knob: value} mappings. Knob names are checked here."""
    known = base.knobs()
    if isinstance(grid, Mapping):
        for name, values in grid.items():
            _check_knob(name, known)
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                raise SweepError(f"sweep grid: knob {name!r} needs a list of values, got {values!r}")
            values = list(values)
            if not values:
                raise SweepError(f"sweep grid: knob {name!r} has an empty list of values")
            for v in values:
                _check_value(name, v)
        names = list(grid)
        return [dict(zip(names, combo)) for combo in itertools.product(*(list(grid[n]) for n in names))]
    variants = [dict(v) for v in grid]
    for v in variants:
        for name, value in v.items():
            _check_knob(name, known)
            _check_value(name, value)
    return variants


def _check_knob(name: str, known: Mapping[str, float]) -> None:
    if name not in known:
        close = difflib.get_close_matches(str(name), list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SweepError(f"sweep grid: unknown knob {name!r}{hint}; the knobs are target.knobs()")


def _check_value(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SweepError(f"sweep grid: knob {name!r} value must be a number, got {value!r}")


# -- does a pass's decision depend on the swept knobs? ------------------------------------------
def knob_matches(knob: str, pattern: str) -> bool:
    """``pattern`` from ``reads_knobs()``: an exact name, a prefix ending in "." ("memory."), or a glob ("memory.*.capacity_bytes")."""
    if pattern.endswith("."):
        return knob.startswith(pattern)
    return fnmatchcase(knob, pattern)


def knobs_read(passes: Sequence[Any], knobs: Iterable[str]) -> dict[str, list[str]]:
    """Pass text -> the swept knobs it reads (all of them when the pass does not declare ``reads_knobs``)."""
    knobs = list(knobs)
    out: dict[str, list[str]] = {}
    for p in passes:
        reads = p.reads_knobs() if callable(getattr(p, "reads_knobs", None)) else None
        hit = list(knobs) if reads is None else [k for k in knobs if any(knob_matches(k, pat) for pat in reads)]
        if hit:
            out[pl.to_text([p])] = hit
    return out


# -- the result -------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SweepResult:
    """One row per variant: its knob values, the estimate's figures and bound, the target's cost columns."""

    program: str
    target: str
    pipeline: str
    knobs: tuple[str, ...]
    columns: Mapping[str, np.ndarray]        # column -> one value per variant (variant order)
    method: str                              # "vectorised", "vectorised by decision (...)" or "per-variant (process|serial|ray)"
    reason: str = ""                         # why the passes ran per variant

    def __len__(self) -> int:
        return len(self.columns["seconds"])

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(self.columns)

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise SweepError(f"no column {name!r}; columns: {', '.join(self.columns)}")
        return self.columns[name]

    def row(self, i: int) -> dict[str, Any]:
        return {name: _py(col[i]) for name, col in self.columns.items()}

    def rows(self) -> list[dict[str, Any]]:
        return [self.row(i) for i in range(len(self))]

    def best(self, column: str = "seconds", largest: bool = False) -> dict[str, Any]:
        """The row with the smallest (or ``largest``) value of ``column``; ties go to the first variant."""
        col = np.asarray(self.column(column), dtype=float)
        i = int(np.argmax(col) if largest else np.argmin(col))
        return self.row(i)

    def pareto(self, cost: str | Callable[[dict[str, Any]], float] = "tdp_w", time: str = "seconds") -> "SweepResult":
        """The variants no other variant beats on both ``time`` and ``cost`` (lower is better for both),
        ordered by cost. ``cost``: a column (``tdp_w``, ``price_usd``, ``die_area_mm2``, a knob) or a
        function of a row (your own cost model).

        When the cost is the same in every variant (``tdp_w`` of a grid that does not sweep it), the front is
        only the fastest variant: that is correct but rarely the question, so a ``SweepWarning`` says so (sweep
        the cost column, or pass a function of the row as ``cost``)."""
        costs = self._cost_values(cost)
        times = np.asarray(self.column(time), dtype=float)
        if len(self) > 1 and len(set(costs.tolist())) == 1:
            what = cost if isinstance(cost, str) else "the cost function"
            warnings.warn(SweepWarning(
                f"pareto: {what} is {costs[0]:g} in every one of the {len(self)} variants, so the front is just the "
                f"fastest variant; sweep {what} (e.g. grid {{{what!r}: [...]}}) or pass cost=a function of the row "
                f"(your cost model)"), stacklevel=2)
        order = sorted(range(len(self)), key=lambda i: (costs[i], times[i], i))
        front, best_time = [], np.inf
        for i in order:
            if times[i] < best_time:
                front.append(i)
                best_time = times[i]
        out = self.take(front)
        if callable(cost):
            out.columns["cost"] = costs[front]
        return out

    def _cost_values(self, cost) -> np.ndarray:
        if callable(cost):
            return np.array([float(cost(r)) for r in self.rows()])
        col = self.column(cost)
        if col.dtype == object and any(v is None for v in col):
            raise SweepError(f"pareto: the target does not set {cost!r} (None); set it with a knob or use another "
                             f"cost column ({', '.join(c for c in COST_COLUMNS if c in self.columns)})")
        return np.asarray(col, dtype=float)

    def take(self, indices: Sequence[int]) -> "SweepResult":
        """The rows at ``indices``, in that order."""
        idx = np.asarray(list(indices), dtype=np.intp)
        return dataclasses.replace(self, columns={k: v[idx] for k, v in self.columns.items()})

    def sorted(self, column: str = "seconds") -> "SweepResult":
        return self.take(np.argsort(np.asarray(self.column(column), dtype=float), kind="stable"))

    # -- rendering ----------------------------------------------------------------------------
    @property
    def pipelined(self) -> bool:
        """Whether the rows are pipelined steps (``sweep(..., pipeline_parallel=...)``)."""
        return "bubble_seconds" in self.columns

    def _cells(self, i: int) -> list[str]:
        c = self.columns
        out = [f"{c[k][i] + 0.0:.4g}" for k in self.knobs]
        if self.pipelined:
            out += [fmt_seconds(c[f][i]) for f in ("seconds", "bubble_seconds", "step_extra_seconds",
                                                   "stage_seconds", "microbatch_seconds")]
            out += [str(c["microbatch_bound"][i]), f"{c['memory_per_device_bytes'][i] / 1e9:.1f} GB",
                    "yes" if c["fits_in_memory"][i] else "NO"]
            return out
        out += [fmt_seconds(c[f][i]) for f in FIGURES]
        out += [str(c["bound"][i]), f"{c['mfu'][i]:.1%}", "yes" if c["fits_in_memory"][i] else "NO"]
        return out

    def _headers(self) -> list[str]:
        if self.pipelined:
            return [*self.knobs, "step", "bubble", "optimizer+grad sync", "stage/microbatch", "microbatch",
                    "microbatch bound", "mem/device", "fits"]
        # compute / memory / comm: time of the kernels each resource bounds, not how long it was busy
        return [*self.knobs, "time", "compute-bound", "memory-bound", "comm-bound", "overhead", "bound", "MFU", "fits"]

    def table(self, top: int | None = None, sort: str | None = None) -> str:
        """Rows as a text table (``sort`` by a column, at most ``top`` rows)."""
        res = self.sorted(sort) if sort else self
        n = len(res) if top is None else min(top, len(res))
        body = tabulate([res._cells(i) for i in range(n)], headers=self._headers(), disable_numparse=True)
        more = f"\n... {len(res) - n} more rows" if n < len(res) else ""
        return (f"program: {self.program}  target: {self.target}  pipeline: {self.pipeline or '(none)'}  "
                f"variants: {len(self)} ({self.method})\n{body}{more}")

    def to_dict(self) -> dict[str, Any]:
        return {"program": self.program, "target": self.target, "pipeline": self.pipeline, "knobs": list(self.knobs),
                "method": self.method, "reason": self.reason, "rows": self.rows()}

    def _repr_html_(self, max_rows: int = 50) -> str:
        n = min(max_rows, len(self))
        body = tabulate([self._cells(i) for i in range(n)], headers=self._headers(), tablefmt="html",
                        disable_numparse=True)
        more = f"<p>... {len(self) - n} more rows</p>" if n < len(self) else ""
        return (f"<h4>Sweep: {self.program} on {self.target} ({len(self)} variants, {self.method})</h4>"
                f"{body}{more}")

    def __str__(self) -> str:
        return self.table(top=50)

    def plot(self, x: str, line: str | None = None, y: str = "seconds", where: Mapping[str, float] | None = None):
        """``plots.sweep_plot``: ``y`` against knob ``x``, one line per value of knob ``line``."""
        try:
            return plots.sweep_plot(self, x, line=line, y=y, where=where)
        except plots.PlotError as exc:
            raise SweepError(str(exc)) from None


def _py(v: Any) -> Any:
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


# -- entry point ------------------------------------------------------------------------------
def sweep(program, base_target, grid: Mapping[str, Sequence[float]] | Sequence[Mapping[str, float]],
          pipeline: str | Sequence[Any] | None = "default", *, backend: str = "auto", workers: int | None = None,
          progress: bool | None = None, strict: bool = False,
          pipeline_parallel: Mapping[str, Any] | None = None) -> SweepResult:
    """Price ``program`` on every variant of ``base_target`` in ``grid``.

    **Arguments**
    - ``grid``: dotted knob name (``target.knobs()``) -> list of values (every combination), or a
      list of {knob: value} variants.
    - ``pipeline``: as in ``explorer.estimate`` (``"default"``, text, pass instances, ``None``).
    - ``backend``: ``"auto"`` (vectorised when no pass reads a swept knob, else grouped),
      ``"vector"`` (refuses when a pass reads a swept knob), ``"grouped"`` (passes run per distinct
      value of the knobs they read, in this process; variants with the same plan priced as arrays),
      ``"process"`` or ``"ray"`` (per variant).
    - ``workers``: worker processes for the per-variant path (default: CPU count; 1 = in this process).
    - ``progress``: a progress line on stderr for the per-variant path (default: when stderr is a terminal).
    - ``pipeline_parallel``: price each variant's pipelined step, ``price_pipeline(estimate, variant, **options)``
      (``stages``, ``microbatches``, ``schedule``, ``virtual``, ``blocks``, ``stage_stride``, ``job_devices``,
      ``microbatch_scale``, ``step_axes``), the program being one microbatch on one stage's devices. Then
      ``seconds`` is the step, beside ``bubble_seconds``, ``bubble_fraction``, ``p2p_exposed_seconds``,
      ``step_extra_seconds`` (optimizer and gradient reduction after the flush), ``stage_seconds`` (the slowest
      stage's forward+backward per microbatch), ``memory_per_device_bytes`` and ``fits_in_memory`` (of the fullest
      stage); the microbatch program's own figures are ``microbatch_seconds``, ``microbatch_compute_seconds``,
      ... Every path prices it (as arrays on the vectorised ones), each row equal to ``price_pipeline`` on its
      variant bit for bit.

    Worker processes are spawned (not forked: the parent runs JAX's threads), so a script that sweeps
    per variant calls ``sweep`` under ``if __name__ == "__main__":``, as any multiprocessing code does.

    **Returns** a ``SweepResult`` with one row per variant, in variant order.
    """
    if backend not in BACKENDS:
        raise SweepError(f"sweep: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    pipeline_parallel = _check_pipeline_parallel(pipeline_parallel)
    base_target = hw_targets.as_target(base_target)      # a preset name or a TOML path
    if strict:
        check_known(program)
    variants = grid_variants(base_target, grid)
    if not variants:
        raise SweepError("sweep: the grid has no variants")
    knobs = tuple(dict.fromkeys(k for v in variants for k in v))
    if pipeline == "default":
        pipeline = pl.default_pipeline(program)
    passes = pl.resolve(pipeline or None)
    text = pl.to_text(passes)
    reads = knobs_read(passes, knobs)
    reason = "; ".join(f"{p} reads {', '.join(ks)}" for p, ks in reads.items())
    if backend == "vector" and reads:
        raise SweepError(f"sweep: backend 'vector' needs pass decisions independent of the swept knobs, but {reason}")
    if backend == "auto":
        backend = "grouped" if reads else "vector"
    base_values = base_target.knobs()
    knob_cols = {k: np.array([v.get(k, base_values[k]) for v in variants]) for k in knobs}
    with paused_gc():      # passes and pricing of the whole program: no collector walks between their allocations
        if backend == "vector":
            plan = pl.run(passes, program, base_target)
            cols = price_variants(program, base_target, plan, knob_cols, len(variants),
                                  pipeline_parallel=pipeline_parallel)
            method = "vectorised"
        elif backend == "grouped":
            certify = certifying(passes, knobs)
            if certify is not None:
                cols, runs, plans = _certified(program, base_target, passes, certify, variants, knob_cols,
                                               pipeline_parallel)
                method = f"vectorised by decision ({runs} pass runs, {plans} distinct plans, certified)"
            else:
                read = sorted({k for ks in reads.values() for k in ks})
                cols, runs, plans = _grouped(program, base_target, passes, variants, read, knob_cols, base_values,
                                             pipeline_parallel)
                method = f"vectorised by decision ({runs} pass runs, {plans} distinct plans)"
        else:
            targets = [base_target.replace(**v) for v in variants]
            rows = _per_variant(program, targets, passes, backend, workers, progress, pipeline_parallel)
            cols = {name: _column([r[name] for r in rows]) for name in rows[0]} if rows else {}
            serial = backend == "process" and _n_workers(workers, len(targets)) == 1
            method = f"per-variant ({'serial' if serial else backend})"
    unread = unread_network_knobs(base_target)      # said once the sweep has priced (a bad grid raises first)
    for k in knobs:
        if k in unread:
            warnings.warn(SweepWarning(f"sweep: {k} moves nothing on {base_target.name}: {unread[k]}"), stacklevel=2)
    name = program.graph.name
    return SweepResult(program=name, target=base_target.name, pipeline=text, knobs=knobs,
                       columns={**knob_cols, **cols}, method=method, reason=reason)


def certifying(passes: Sequence[Any], knobs: Iterable[str]) -> list[Any] | None:
    """The passes whose decisions read any of ``knobs``, when every one of them certifies its decisions
    (``run_certified``, ``passes.decisions``); None when one does not (it must run again per distinct value)."""
    readers = [p for p in passes if knobs_read([p], knobs)]
    return readers if all(callable(getattr(p, "run_certified", None)) for p in readers) else None


def _decisions(plan) -> Any:
    """What of a plan sets the prices: everything but its notes (which may quote the target's figures)."""
    return dataclasses.replace(plan, notes=())


def _grouped(program, base_target, passes: list[Any], variants: list[dict[str, float]], read: list[str],
             knob_cols: dict[str, np.ndarray], base_values: Mapping[str, float],
             pipeline_parallel: Mapping[str, Any] | None = None) -> tuple[dict[str, np.ndarray], int, int]:
    """The passes run once per distinct value of the knobs they read (their decisions depend on nothing else, as
    ``reads_knobs`` promises); variants whose runs made the same plan are priced together as arrays. Every row is
    still ``explorer.estimate`` on its variant, bit for bit."""
    by_read: dict[tuple, list[int]] = {}
    for i, v in enumerate(variants):
        by_read.setdefault(tuple(v.get(k, base_values[k]) for k in read), []).append(i)
    groups: list[tuple[Any, Any, list[int]]] = []      # (plan, its decisions, variant indices), first-seen order
    for key, rows in by_read.items():
        _join(groups, pl.run(passes, program, base_target.replace(**dict(zip(read, key)))), rows)
    return _price_groups(program, base_target, groups, knob_cols, len(variants), pipeline_parallel), len(by_read), \
        len(groups)


def _join(groups: list[tuple[Any, Any, list[int]]], plan, rows: Sequence[int]) -> None:
    """Variants ``rows`` priced under ``plan``: into the group that made the same decisions, else a new group."""
    decided = _decisions(plan)
    for _, known, members in groups:
        if known == decided:
            members.extend(rows)
            return
    groups.append((plan, decided, list(rows)))


def _price_groups(program, base_target, groups: list[tuple[Any, Any, list[int]]], knob_cols: dict[str, np.ndarray],
                  n: int, pipeline_parallel: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    """Each group's variants priced as arrays under its plan, the columns put back in variant order."""
    parts = []
    for plan, _, rows in groups:
        idx = np.array(sorted(rows))
        parts.append((idx, price_variants(program, base_target, plan, {k: c[idx] for k, c in knob_cols.items()},
                                          len(idx), pipeline_parallel=pipeline_parallel)))
    out: dict[str, np.ndarray] = {}
    for name in parts[0][1]:
        pieces = [part[name] for _, part in parts]
        dtype = pieces[0].dtype if all(p.dtype == pieces[0].dtype for p in pieces) else np.result_type(*pieces)
        col = np.empty(n, dtype=dtype)      # a string column as wide as its widest group's
        for (idx, _), piece in zip(parts, pieces):
            col[idx] = piece
        out[name] = col
    return out


def _certified(program, base_target, passes: list[Any], certify: list[Any], variants: list[dict[str, float]],
               knob_cols: dict[str, np.ndarray], pipeline_parallel: Mapping[str, Any] | None = None,
               chunk: int = 2048) -> tuple[dict[str, np.ndarray], int, int]:
    """Passes whose decisions read swept knobs all certify them (``run_certified``, ``passes.decisions``): run the
    pipeline on the first variant not yet covered, check its certificates on every uncovered variant at once (as
    arrays), and take those where they hold into its group; repeat until every variant is covered. Usually one run
    covers a whole hardware sweep; where a decision does change, the variants on each side get their own run.
    Every row still equals ``explorer.estimate`` on its variant bit for bit."""
    remaining = np.arange(len(variants))
    groups: list[tuple[Any, Any, list[int]]] = []
    runs = 0
    while remaining.size:
        first = int(remaining[0])
        plan, certificates = pl.run_certified(passes, program, base_target.replace(**variants[first]), certify)
        runs += 1
        sub = {k: c[remaining] for k, c in knob_cols.items()}
        holds = np.ones(remaining.size, dtype=bool)
        sections = Sections(base_target, sub, remaining.size)
        for lo in range(0, remaining.size, chunk):
            rows = slice(lo, min(lo + chunk, remaining.size))
            at = ArrayTarget(sections, rows)
            for cert in certificates:
                holds[rows] &= cert.holds(at, rows.stop - rows.start)
        holds[0] = True            # where it ran the plan is its own (a broken certificate holds there alone)
        members, remaining = remaining[holds], remaining[~holds]
        _join(groups, plan, members.tolist())
    return _price_groups(program, base_target, groups, knob_cols, len(variants), pipeline_parallel), runs, len(groups)


def _column(values: list[Any]) -> np.ndarray:
    if all(isinstance(v, bool) for v in values):
        return np.array(values, dtype=bool)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=float if any(isinstance(v, float) for v in values) else np.int64)
    return np.array(values, dtype=object)


def row_of(est, target) -> dict[str, Any]:
    """The sweep columns of one estimate (what the per-variant path returns for each variant)."""
    row: dict[str, Any] = {f: getattr(est, f) for f in FIGURES}
    row.update(bound=est.bound, mfu=est.mfu, fits_in_memory=est.fits_in_memory, flops=est.flops,
               bytes_accessed=est.bytes_accessed, kernels=est.num_kernels, peak_memory_bytes=est.peak_memory_bytes)
    for c in COST_COLUMNS:
        row[c] = getattr(target, c)
    return row


def pipelined_row(est, target, pipeline_parallel: Mapping[str, Any]) -> dict[str, Any]:
    """The sweep columns of one variant's pipelined step: ``price_pipeline(est, target, **pipeline_parallel)``'s
    figures beside the microbatch estimate's (``explorer.pricing.vectorised.pipelined_columns``)."""
    layout = pipeline_layout(est, **pipeline_parallel)
    t = layout.timed(target, [k.seconds for k in est.kernels], est.seconds, est.hidden_comm_seconds)
    return pipelined_columns(row_of(est, target), t, layout, target)


_PIPELINE_OPTIONS = ("stages", "microbatches", "schedule", "virtual", "blocks", "stage_stride", "job_devices",
                     "microbatch_scale", "step_axes")


def _check_pipeline_parallel(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise SweepError(f"sweep: pipeline_parallel must be a dict of price_pipeline's options, got {options!r}")
    for k in options:
        if k not in _PIPELINE_OPTIONS:
            close = difflib.get_close_matches(str(k), _PIPELINE_OPTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SweepError(f"sweep: unknown pipeline_parallel option {k!r}{hint}; known: {', '.join(_PIPELINE_OPTIONS)}")
    for k in ("stages", "microbatches"):
        if k not in options:
            raise SweepError(f"sweep: pipeline_parallel needs {k!r}")
    for k in ("stages", "microbatches", "virtual", "stage_stride", "job_devices", "blocks"):
        v = options.get(k)
        low = 0 if k in ("job_devices", "blocks") else 1
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
            raise SweepError(f"sweep: pipeline_parallel {k} must be an int >= {low}, got {v!r}")
    schedule = options.get("schedule", "1f1b")
    if schedule not in SCHEDULES:
        raise SweepError(f"sweep: pipeline_parallel schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if schedule == "interleaved" and options["microbatches"] % options["stages"]:
        raise SweepError(f"sweep: interleaved 1F1B needs microbatches ({options['microbatches']}) divisible by "
                         f"stages ({options['stages']})")
    if schedule != "interleaved" and options.get("virtual", 1) != 1:
        raise SweepError(f"sweep: pipeline_parallel virtual={options['virtual']} needs schedule 'interleaved'")
    scale = options.get("microbatch_scale", 1.0)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale < float("inf"):
        raise SweepError(f"sweep: pipeline_parallel microbatch_scale must be a positive number, got {scale!r}")
    return dict(options)


# -- per-variant pricing ----------------------------------------------------------------------
def _mappingproxy(d: dict) -> types.MappingProxyType:
    return types.MappingProxyType(d)


def program_bytes(program) -> bytes:
    """The program pickled for a worker: read-only mappings as dicts, the jax ``Lowered`` handle dropped."""
    f = io.BytesIO()
    p = pickle.Pickler(f, protocol=pickle.HIGHEST_PROTOCOL)
    p.dispatch_table = copyreg.dispatch_table.copy()
    p.dispatch_table[types.MappingProxyType] = lambda m: (_mappingproxy, (dict(m),))
    p.dump(dataclasses.replace(program, lowered=None) if dataclasses.is_dataclass(program) else program)
    return f.getvalue()


_WORKER_PROGRAM: Any = None


def _init_worker(blob: bytes) -> None:
    global _WORKER_PROGRAM
    _WORKER_PROGRAM = pickle.loads(blob)


def _estimate_row(task: tuple[Any, list[Any], Mapping[str, Any] | None]) -> dict[str, Any]:
    return _variant_row(_WORKER_PROGRAM, *task)


def _variant_row(program, target, passes: list[Any], pipeline_parallel: Mapping[str, Any] | None) -> dict[str, Any]:
    est = estimate(program, target, pipeline=passes)
    return row_of(est, target) if pipeline_parallel is None else pipelined_row(est, target, pipeline_parallel)


def _n_workers(workers: int | None, n: int) -> int:
    w = (os.cpu_count() or 1) if workers is None else workers
    if w < 1:
        raise SweepError(f"sweep: workers must be >= 1, got {workers!r}")
    return max(1, min(w, n))


class _Progress:
    """``sweep: 12/100 variants`` on stderr, rewritten in place."""

    def __init__(self, total: int, enabled: bool | None):
        self.total, self.done = total, 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def step(self, k: int = 1) -> None:
        self.done += k
        if self.enabled:
            end = "\n" if self.done >= self.total else ""
            print(f"\rsweep: {self.done}/{self.total} variants", end=end, file=sys.stderr, flush=True)


def _per_variant(program, targets: list[Any], passes: list[Any], backend: str, workers: int | None,
                 progress: bool | None, pipeline_parallel: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    tasks = [(t, list(passes), pipeline_parallel) for t in targets]
    bar = _Progress(len(tasks), progress)
    if backend == "ray":
        return _ray_map(program, tasks, bar)
    n = _n_workers(workers, len(tasks))
    if n == 1:
        rows = []
        for task in tasks:
            rows.append(_variant_row(program, *task))
            bar.step()
        return rows
    # spawn, not fork: the parent runs JAX's threads, and a forked copy of them can deadlock
    ctx = multiprocessing.get_context("spawn")
    rows = []
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker,
                             initargs=(program_bytes(program),)) as pool:
        for row in pool.map(_estimate_row, tasks, chunksize=max(1, len(tasks) // (4 * n))):
            rows.append(row)      # map yields in task order, whatever order the workers finish in
            bar.step()
    return rows


_RAY_PROGRAMS: dict[str, Any] = {}


def _ray_row(token: str, blob: bytes, task) -> dict[str, Any]:
    """One variant on a Ray worker; the worker keeps the last program it unpickled (by content hash)."""
    if token not in _RAY_PROGRAMS:
        _RAY_PROGRAMS.clear()
        _RAY_PROGRAMS[token] = pickle.loads(blob)
    return _variant_row(_RAY_PROGRAMS[token], *task)


def _ray_map(program, tasks: list[tuple[Any, list[Any], Any]], bar: _Progress) -> list[dict[str, Any]]:
    """The per-variant path on a Ray cluster (``ray.init()`` on this machine unless one is running)."""
    try:
        import ray
    except ImportError:
        raise SweepError("sweep: backend 'ray' needs ray (pip install 'hw-whatif-explorer[ray]')") from None
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    data = program_bytes(program)
    token, blob = hashlib.sha256(data).hexdigest(), ray.put(data)
    run_one = ray.remote(_ray_row)
    refs = [run_one.remote(token, blob, t) for t in tasks]
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=min(len(pending), max(1, len(refs) // 20)))
        bar.step(len(done))
    return ray.get(refs)     # in submission order
