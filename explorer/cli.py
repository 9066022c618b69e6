"""Command line: ``python -m explorer {compare,show,targets,passes,regress} ...`` (also the ``explorer`` script)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Sequence

from tabulate import tabulate

import hw_targets
from passes import pipeline as pl

from .frontend.model_files import load_program, parse_overrides
from .pricing.price import estimate
from .report import plots
from .workflows import regress
from .workflows.compare import compare

DEFAULT_TARGETS = ("h100_sxm", "tpu_v5p", "mi300x")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="explorer", description="Hardware what-if explorer for JAX programs.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp):
        sp.add_argument("model", help="example file (file.py or file.py:program) or StableHLO .mlir/.mlirbc")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the example's Config (repeatable)")
        sp.add_argument("--pipeline", action="append", default=None,
                        help="pass pipeline text, e.g. 'fuse{strategy=xla}' ('none' for no passes; repeatable in compare)")
        sp.add_argument("--trip-count", action="append", default=[], metavar="LOOP=N",
                        help="trip count of a while loop whose count cannot be inferred (op id or name stack)")
        sp.add_argument("--strict", action="store_true", help="fail if any op has no cost rule")
        sp.add_argument("--json", action="store_true", help="print JSON instead of tables")

    c = sub.add_parser("compare", help="estimate one program on several targets (and pipelines)")
    model_args(c)
    c.add_argument("--target", action="append", default=None, help="preset name or TOML path (repeatable)")
    c.add_argument("--plot", metavar="FILE", help="also save a per-target bar chart (.png, .svg or .pdf)")
    s = sub.add_parser("show", help="per-layer / per-kernel breakdown on one target")
    model_args(s)
    s.add_argument("--target", default="h100_sxm")
    s.add_argument("--top", type=int, default=15)
    s.add_argument("--depth", type=int, default=2, help="layer name depth in the per-layer table")
    s.add_argument("--plot", metavar="FILE", help="also save the roofline and per-layer charts (.png, .svg or .pdf)")
    s.add_argument("--trace", metavar="FILE", help="also write the estimated timeline as Chrome trace JSON (Perfetto)")
    sub.add_parser("targets", help="list the preset targets")
    sub.add_parser("passes", help="list the passes and their options")
    r = sub.add_parser("regress", help="check the pinned regression cases (exit 1 if a figure moved)")
    r.add_argument("--dir", default=None,
                   help="directory holding cases.toml and expected/ (default: examples/regressions of the current "
                        "directory; never the installed package's own)")
    r.add_argument("--case", action="append", default=None, help="only this case (repeatable)")
    r.add_argument("--update", action="store_true", help="rewrite the pinned figures with the current ones")
    return p


def _pipelines(values: Sequence[str] | None) -> list:
    if not values:
        return ["default"]
    return [None if v.strip().lower() in ("none", "") else v for v in values]


def _program(args):
    prog = load_program(args.model, parse_overrides(args.set))
    if args.trip_count:
        counts = {}
        for item in args.trip_count:
            key, _, n = item.rpartition("=")
            counts[int(key) if key.isdigit() else key] = int(n)
        prog = prog.with_trip_counts(counts)
    return prog


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "targets":
        rows = []
        for name in hw_targets.names():
            t = hw_targets.load(name)
            rows.append([name, t.description, f"{t.matrix_rate('bf16') / 1e12:.0f}",
                         f"{t.main_memory.bandwidth_bytes_per_s / 1e12:.2f}", f"{t.main_memory.capacity_bytes / 1e9:.0f}",
                         f"{(t.on_chip.capacity_bytes / 1e6 if t.on_chip else 0):.0f}",
                         f"{t.scale_up.topology} x{t.scale_up.domain_size}",
                         f"{t.scale_up.chip_bandwidth_bytes_per_s / 1e9:.0f}", f"{t.tdp_w:.0f}"])
        print(tabulate(rows, headers=["name", "description", "bf16 TFLOP/s", "HBM TB/s", "HBM GB", "on-chip MB",
                                      "scale-up", "scale-up GB/s/dir", "TDP W"]))
        return 0
    if args.command == "passes":
        for name, cls in pl.available().items():
            opts = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls))
            print(f"{name}{{{opts}}}\n    {(cls.__doc__ or '').strip().splitlines()[0]}")
        print(f"default pipeline: {pl.default_pipeline() or '(none)'}")
        return 0
    if args.command == "regress":
        directory = args.dir or regress.default_dir()
        if args.update:
            for path in regress.update(directory, args.case):
                print(f"pinned {path}")
            return 0
        report = regress.check(directory, args.case)
        print(report.text())
        return 0 if report.ok else 1
    prog = _program(args)
    if args.command == "compare":
        targets = [hw_targets.load(t) for t in (args.target or DEFAULT_TARGETS)]
        cmp = compare(prog, targets, pipelines=_pipelines(args.pipeline), strict=args.strict)
        print(json.dumps(cmp.to_dict(), indent=1) if args.json else cmp.table())
        if args.plot:
            _note(f"plot: {plots.save(plots.compare_plot(cmp), args.plot)}")
        return 0
    if args.command == "show":
        target = hw_targets.load(args.target)
        est = estimate(prog, target, pipeline=_pipelines(args.pipeline)[0], strict=args.strict)
        print(json.dumps(est.to_dict(), indent=1) if args.json else est.table(top=args.top, layer_depth=args.depth))
        if args.plot:
            _note(f"plot: {plots.save(plots.estimate_overview(est, target), args.plot)}")
        if args.trace:
            est.to_chrome_trace(args.trace)
            _note(f"trace: {args.trace} (open in https://ui.perfetto.dev or chrome://tracing)")
        return 0
    return 2


def _note(text: str) -> None:
    """Side information on stderr, so ``--json`` output on stdout stays parseable."""
    print(text, file=sys.stderr)


def run() -> None:
    try:
        sys.exit(main())
    except Exception as exc:  # a clear one-line error for the shell, not a traceback
        if "--debug" in sys.argv[1:2]:
            raise
        print(f"explorer: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
