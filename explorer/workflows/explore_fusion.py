"""Exploring fusion choices one decision at a time (the notebook workflow).

A decision is a (producer op, consumer op) edge the fusion pass fused. Ranking: every
decision gets a quick score (the bytes it keeps out of main memory at the target's
bandwidth, plus the launch it saves); the best ``top`` by score are then measured
exactly, by re-running the pipeline with that one decision forbidden.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from tabulate import tabulate

from passes import pipeline as pl
from passes.fusion import Fuse

from ..graph import names
from ..graph.gcpause import paused_gc
from ..pricing.price import step_seconds
from ..report.units import fmt_bytes, fmt_seconds


@dataclass(frozen=True)
class FusionDecision:
    producer: int
    consumer: int
    producer_op: str
    consumer_op: str
    layer: str
    bytes_kept_on_chip: float     # the intermediate that never reaches main memory (one write + one read)
    seconds_saved: float          # exact: estimate with this decision forbidden minus with it (all runs)
    tensor: str = ""              # the intermediate(s) the decision keeps on chip, shape x dtype ("64x128xbf16")
    producer_shape: str = ""      # the producer's result, shape x dtype
    phase: str = ""               # forward / backward / optimizer (of the consumer)

    @property
    def edge(self) -> str:
        return f"{self.producer}>{self.consumer}"


def _fuse_pass(pipeline: str | list) -> tuple[list, int]:
    passes = pl.resolve(pipeline)
    for i, p in enumerate(passes):
        if isinstance(p, Fuse):
            return passes, i
    raise ValueError(f"pipeline {pipeline!r} has no fuse pass")


def with_fusion_edges(pipeline: str | list, forbid=(), force=()) -> list:
    """The pipeline with extra edges forbidden / forced in its fuse pass (edges as (producer, consumer))."""
    passes, i = _fuse_pass(pipeline)
    f = passes[i]
    fmt = lambda edges: ";".join(f"{a}>{b}" for a, b in edges)
    passes[i] = replace(f, forbid=";".join(filter(None, [f.forbid, fmt(forbid)])),
                        force=";".join(filter(None, [f.force, fmt(force)])))
    return passes


def fusion_decisions(program, target, pipeline: str | list = "fuse{strategy=xla}", top: int = 10) -> list[FusionDecision]:
    """The ``top`` fusion decisions ranked by exact time saved on ``target``."""
    with paused_gc():      # 1 + ``top`` fusions and pricings of the whole program, each allocating millions
        return _fusion_decisions(program, target, pipeline, top)


def _fusion_decisions(program, target, pipeline, top: int) -> list[FusionDecision]:
    passes, i = _fuse_pass(pipeline)
    edges = [e for e in passes[i].candidates(program, target) if e[1] >= 0]
    graph = program.graph
    main = target.main_memory
    t_byte = 1.0 / (main.bandwidth_bytes_per_s * target.efficiency.memory)

    def intermediate(p: int, c: int) -> float:
        vals = set(graph.ops[p].results) & set(graph.ops[c].operands)
        return float(sum(graph.values[v].nbytes for v in vals))

    def tensors(p: int, c: int) -> str:
        vals = sorted(set(graph.ops[p].results) & set(graph.ops[c].operands))
        return ", ".join(str(graph.values[v]) for v in vals)

    def score(e) -> float:
        runs = program.weights[e[0]]
        return runs * (2 * intermediate(*e) * t_byte + target.launch_overhead_s)

    base = step_seconds(program, target, pipeline=passes)      # ``estimate(...).seconds``, bit for bit
    # work outside forward / backward is the optimizer update when the program has a backward pass
    other = "optimizer" if any(names.parse(op.name_stack)[0] == "backward" for op in graph.ops) else "forward"

    def phase_of(op: int) -> str:
        ph = names.parse(graph.ops[op].name_stack)[0]
        return other if ph == "other" else ph

    out = []
    for p, c in sorted(edges, key=lambda e: (-score(e), e))[:top]:
        t = step_seconds(program, target, pipeline=with_fusion_edges(passes, forbid=[(p, c)]))
        out.append(FusionDecision(
            producer=p, consumer=c, producer_op=graph.ops[p].short_name, consumer_op=graph.ops[c].short_name,
            layer=names.parse(graph.ops[c].name_stack)[1], bytes_kept_on_chip=2 * intermediate(p, c) * program.weights[p],
            seconds_saved=t - base, tensor=tensors(p, c),
            producer_shape=", ".join(str(graph.values[v]) for v in graph.ops[p].results),
            phase=phase_of(c)))
    out.sort(key=lambda d: (-d.seconds_saved, d.producer, d.consumer))
    return out


def decisions_table(decisions: list[FusionDecision]) -> str:
    """One row per decision: the ops it fuses with the tensor it keeps on chip (shape x dtype), where it is
    (layer, phase), the bytes kept out of main memory and the exact time saved; ``edge`` (producer>consumer
    op ids) is what ``with_fusion_edges`` takes."""
    return tabulate([[f"{d.producer_op} -> {d.consumer_op}", d.tensor or d.producer_shape,
                      names.display_layer(d.layer, d.phase), d.phase, fmt_bytes(d.bytes_kept_on_chip),
                      fmt_seconds(d.seconds_saved), d.edge] for d in decisions],
                    headers=["fuses", "tensor kept on chip", "layer", "phase", "bytes kept", "time saved", "edge"],
                    disable_numparse=True)


def summary(decisions: list[FusionDecision]) -> list[dict[str, Any]]:
    return [d.__dict__ | {"edge": d.edge} for d in decisions]
