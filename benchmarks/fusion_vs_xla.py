"""Our ``fuse{strategy=xla}`` kernel count against the kernels in XLA's own compiled CPU HLO.

XLA's count: fusion instructions plus the unfused instructions that do work (dots,
convolutions, custom calls, copies, ...) in the computations the executable runs
(ENTRY, while bodies/conditions, branch computations), i.e. everything except
parameters, constants, tuples, get-tuple-element, bitcasts and control flow.

    python benchmarks/fusion_vs_xla.py            # all examples at their default sizes
    python benchmarks/fusion_vs_xla.py --small    # the examples' small configurations
"""
from __future__ import annotations

import argparse
import glob
import os

import jax

import explorer
import hw_targets
from explorer.model_files import load_module

_NOT_KERNELS = ("parameter(", "constant(", "tuple(", "get-tuple-element(", "bitcast(", "while(", "conditional(",
                "call(", "after-all(", "partition-id(", "replica-id(", "opt-barrier(")


def xla_kernels(hlo_text: str) -> dict[str, int]:
    """Count work-doing instructions in the computations the executable runs: ENTRY and the bodies,
    conditions and branches of control flow (not fusion bodies, not reducer computations)."""
    comps: dict[str, list[str]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        s = line.strip()
        if s.endswith("{") and ("(" in s) and not s.startswith(("ROOT", "//")) and " = " not in s.split("(")[0]:
            name = s.split("(")[0].replace("ENTRY", "").strip().lstrip("%")
            current = name
            comps[name] = []
            if s.startswith("ENTRY"):
                entry = name
            continue
        if s == "}":
            current = None
            continue
        if current is not None and " = " in s:
            comps[current].append(s)
    run, todo = set(), [entry]
    while todo:
        c = todo.pop()
        if c in run or c not in comps:
            continue
        run.add(c)
        for inst in comps[c]:
            for key in ("body=", "condition=", "true_computation=", "false_computation="):
                if key in inst:
                    todo.append(inst.split(key, 1)[1].split(",")[0].split(")")[0].strip().lstrip("%"))
            if "branch_computations={" in inst:
                inner = inst.split("branch_computations={", 1)[1].split("}")[0]
                todo.extend(x.strip().lstrip("%") for x in inner.split(","))
    counts = {"fusion": 0, "other": 0}
    for c in run:
        for inst in comps[c]:
            rhs = inst.split(" = ", 1)[1]
            op = rhs.split(" ", 1)[1] if " " in rhs else rhs
            if op.startswith("fusion("):
                counts["fusion"] += 1
            elif not op.startswith(_NOT_KERNELS):
                counts["other"] += 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    target = hw_targets.load("h100_sxm")
    print(f"{'program':26s} {'ours xla':>9s} {'ours, no epilogue':>18s} {'XLA CPU: fusions + other':>26s} {'XLA total':>10s} {'ratio':>6s}")
    for path in sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "examples", "*.py"))):
        mod = load_module(__import__("pathlib").Path(path))
        programs = getattr(mod, "PROGRAMS", None) or {"": mod.program}
        for name, fn in programs.items():
            if args.small:
                f, fargs = fn(**mod.SMALL_CONFIG)
            else:
                f, fargs = fn()
            prog = explorer.lower(f, *fargs)
            est = explorer.estimate(prog, target, pipeline="fuse{strategy=xla}")
            cpu_like = explorer.estimate(prog, target, pipeline="fuse{strategy=xla,matmul_epilogue=false}")
            hlo = jax.jit(f).lower(*fargs).compile().as_text()
            x = xla_kernels(hlo)
            total = x["fusion"] + x["other"]
            label = os.path.basename(path) + (f":{name}" if name else "")
            print(f"{label:26s} {est.num_kernels:9d} {cpu_like.num_kernels:18d} {x['fusion']:>14d} + {x['other']:<9d} {total:10d} "
                  f"{cpu_like.num_kernels / total:6.2f}")
    print("""
ratio = ours without matmul epilogues (as XLA CPU runs dots) / XLA's count.
Why the counts differ:
- XLA CPU runs dots and convolutions as library calls (Eigen/oneDNN) and does not fuse their
  elementwise epilogues into them; our `xla` strategy prices a GPU/TPU-style epilogue fusion
  (matmul_epilogue=true), so it has fewer kernels around every matmul.
- XLA duplicates cheap producers and fuses sibling reductions more aggressively in places
  (horizontal/loop fusion over independent ops), and its CPU backend also fuses into
  dynamic-update-slice in place; both lower its count.
- Ops JAX emits that XLA folds away at compile time (algebraic simplification, CSE of repeated
  broadcasts and converts) are still in our graph, which can raise our count.
- Loop bodies are counted once in both (the count is of kernels in the executable, not launches).""")


if __name__ == "__main__":
    main()
