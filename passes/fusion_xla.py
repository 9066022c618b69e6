"""The ``fuse{strategy=xla}`` decisions: XLA's fusion passes imitated on our graph, per compiler flavour.

What XLA:GPU does (and this module imitates, measured against it by ``benchmarks/fidelity_xla.py``):

1. **Producer fusion into all consumers** (XLA:GPU's priority fusion): a producer is fused into *every* kernel
   that reads it, or into none. With one consumer the two merge; with several the producer is duplicated,
   recomputed inside each consumer, when that is cheap: it is elementwise or data movement, not an expensive
   operation (transcendentals; on a GPU divide, sqrt, rsqrt and exp in f32/f16 are cheap), and recomputing it
   moves no more bytes than writing it once and reading it back in each consumer. Producers are visited from
   the end of the program to its start, so chains collapse into their last consumer.
2. What a kernel can take: a reduction takes elementwise producers (input fusion) but never another reduction;
   on a GPU a reduction's result fuses only into consumers that keep its shape (an epilogue of the reduction, not a
   broadcast back: that would turn the reduction kernel into a loop), on a TPU not at all; a matmul takes elementwise prologues that
   do not make its operand bigger to read (it re-reads operands per tile: a weight's f32 -> bf16 convert stays a
   kernel of its own); when it is its result's only reader, a cheap elementwise epilogue on a GPU (scale, bias,
   ReLU, an output convert: XLA:GPU's GEMM fusions; an activation with a transcendental stays a kernel of its
   own, and so does a reduction of the result), any elementwise epilogue on a TPU (XLA:TPU's output fusion).
   An in-place update (dynamic-update-slice, scatter) takes the producers of its update, not of the buffer it
   updates. Producers computed from nothing (iotas, constants: a causal mask) cost nothing to recompute.
3. **Multi-output fusion**: a producer that could not be fused into all its consumers is fused into one of them
   whose loop has the same shape, and its result is also written out (producer-consumer multi-output fusion);
   kernels that read the same large value and do not depend on each other merge when their loops have the same
   shape (sibling multi-output fusion: the two statistics of a layer norm in one reduction).

Fusion never crosses a loop or branch boundary. Decisions do not read the target's numbers, only its kind
(``gpu`` / ``tpu`` flavour; any other kind follows the GPU rules), so sweeps over a target's knobs keep one plan.
"""
from __future__ import annotations

import heapq
import math

from dataclasses import dataclass, field
from typing import Any, Iterable

from explorer.model.liveness import alias_roots

from .fusion_ops import GENERATORS, IN_PLACE_ROOTS, PARTIAL_READERS, Edge, materialised, op_class, producer_through_views, space_of

# XLA's InstructionFusion::IsExpensive, for our op names (a GPU runs f32/f16 divide, sqrt, rsqrt, exp cheaply)
EXPENSIVE = frozenset({
    "stablehlo.exponential", "stablehlo.exponential_minus_one", "stablehlo.log", "stablehlo.log_plus_one",
    "stablehlo.logistic", "stablehlo.tanh", "stablehlo.power", "stablehlo.sine", "stablehlo.cosine", "stablehlo.tan",
    "stablehlo.atan2", "stablehlo.cbrt", "stablehlo.sqrt", "stablehlo.rsqrt", "stablehlo.divide", "stablehlo.remainder",
    "chlo.erf", "chlo.erfc", "chlo.erf_inv", "chlo.lgamma", "chlo.digamma", "chlo.tan", "chlo.sinh", "chlo.cosh",
    "chlo.asin", "chlo.acos", "chlo.atan", "chlo.asinh", "chlo.acosh", "chlo.atanh", "chlo.bessel_i1e",
    "chlo.polygamma", "chlo.zeta", "chlo.next_after",
})
# XLA:GPU (Hopper) splits a GEMM along K when its output has fewer than this many elements per K element
# (assumption: measured on XLA 0.10 deviceless compiles, M*N/K of 512 splits and 1024 does not; A100 never splits)
SPLIT_K_OUTPUT_PER_K = 1024
# what a GEMM fusion's operand loads cannot do on XLA:GPU (they stay loop kernels of their own)
NO_GEMM_PROLOGUE = frozenset({"stablehlo.concatenate", "stablehlo.pad", "stablehlo.gather", "stablehlo.reverse",
                              "stablehlo.dynamic_slice"})
# what XLA:TPU's convolution fusion does not take as an operand's prologue (measured: patterns ``pro_reverse``,
# ``pro_gather``); the producers of a concatenate's or pad's operands never fuse into it (``concat_loop``,
# ``pad_loop``, ``prologue_concat``): it reads them from memory
NO_TPU_PROLOGUE = frozenset({"stablehlo.reverse", "stablehlo.gather"})
TPU_OPERAND_BARRIERS = frozenset({"stablehlo.concatenate", "stablehlo.pad"})
GPU_CHEAP_IN_F32 = frozenset({"stablehlo.divide", "stablehlo.sqrt", "stablehlo.rsqrt", "stablehlo.exponential"})
# XLA:GPU does not fuse a reduction with another unless one of them is small (its elemental emitter handles those)
SIGNIFICANT_REDUCTION = 16
# rows Triton's normalization fusion keeps on chip (assumption: XLA:GPU's softmax rewriter tiles a row per block;
# rows beyond this length fall back to separate reduction and loop kernels)
TRITON_ROW_LIMIT = 32768


# the core count split-K fills with tiles: the H100's 132 SMs, on which ``split_k_factor`` was measured (assumption:
# a swept ``compute.matrix_units`` does not re-decide split-K, so the fusion decision reads no knob and sweeps stay
# vectorised; XLA itself would split for the core count it compiles for)
SPLIT_K_CORES = 132


def split_k_factor(m: int, n: int, k: int, batch: int = 1, cores: int = SPLIT_K_CORES) -> int:
    """The number of K slices XLA:GPU (Hopper) splits a ``batch x [m, k] x [k, n]`` GEMM into, each writing an f32
    partial ``[m, n]`` that a reduction kernel adds up; 1 when it does not split. Two limits, the smaller wins:
    enough 128 x 128 output tiles for 1.5 per core (the tile target of XLA's split-K heuristics), and
    ``8 sqrt(k / n) sqrt(min(1, 128 / (batch m)))``, each rounded down to a power of two, at most 32, and no split
    for outputs of ``SPLIT_K_OUTPUT_PER_K`` x K elements or more. Fitted to the factors XLA chose on deviceless H100
    compiles of 223 shapes (``python benchmarks/xla_split_k.py``: the 210 of
    ``benchmarks/results/2026-12-01-1201-xla-split-k-h100_sxm.txt``, and 13 batched and GPT-2-sized ones in
    ``tests/test_fusion.py``): 202 exact, 220 within a factor of 2."""
    if m * n >= SPLIT_K_OUTPUT_PER_K * k:
        return 1

    def pow2_floor(x: float) -> int:
        return 2 ** math.floor(math.log2(x)) if x >= 1 else 1

    by_shape = 8.0 * math.sqrt(k / max(1, n)) * math.sqrt(min(1.0, 128.0 / max(1, batch * m)))
    tiles = max(1, batch) * -(-m // 128) * -(-n // 128)
    return int(max(1, min(32, pow2_floor(by_shape), pow2_floor(1.5 * cores / tiles))))


def flavour_of(target) -> str:
    kind = getattr(target, "kind", "") if target is not None else ""
    return "tpu" if kind == "tpu" else "gpu"


@dataclass
class Fusion:
    """The decisions: groups of op ids (each one kernel), the ops recomputed inside each, the edges fused."""

    groups: list[list[int]]
    copies: list[frozenset[int]]
    made: set[Edge] = field(default_factory=set)
    layout_copies: list[tuple[int, int]] = field(default_factory=list)   # (value, matmul op) copied to the
                                                                          # layout the matmul needs
    split_k: frozenset[int] = frozenset()   # matmuls XLA:GPU splits along K (partial sums through memory)


class _Lazy(dict):
    """A dict whose missing entry is made by ``make(key)`` (and kept)."""

    def __init__(self, make) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key):
        value = self[key] = self.make(key)
        return value

    def take(self, key):
        """Remove and return the entry, made first if it was never read."""
        return self.pop(key) if key in self else self.make(key)


class _State:
    """Union-find over the ops that are kernels, with, per group, the ops recomputed (duplicated) in it."""

    def __init__(self, program, cls: dict[int, str], owned: Iterable[int]):
        self.program, self.graph, self.cls = program, program.graph, cls
        self.users = self.graph.consumers()
        owned = tuple(owned)
        self.parent: dict[int, int] = {o: o for o in owned}
        self.members: dict[int, list[int]] = {o: [o] for o in owned}
        # per root, made when first read (most groups never merge: a set per op up front was a fifth of a run)
        self.copies: dict[int, set[int]] = _Lazy(lambda o: set())
        self.kinds: dict[int, set[str]] = _Lazy(lambda o: {cls[o]})
        # root -> significant reductions in the group
        self.reduces: dict[int, int] = _Lazy(lambda o: int(self._significant_reduce(o)))
        self.copied_in: dict[int, set[int]] = {}   # unowned op -> roots of the groups recomputing it

    def _significant_reduce(self, o: int) -> bool:
        if self.cls[o] != "reduce":
            return False
        op = self.graph.ops[o]
        src, out = self.graph.values[op.operands[0]], self.graph.values[op.results[0]]
        return src.elements >= SIGNIFICANT_REDUCTION * max(1, out.elements)

    def owned(self, o: int) -> bool:
        return o in self.parent

    def find(self, o: int) -> int:
        p = self.parent
        while p[o] != o:
            p[o] = p[p[o]]
            o = p[o]
        return o

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra].extend(self.members.pop(rb))
        self.copies[ra] |= self.copies.take(rb)
        self.kinds[ra] |= self.kinds.take(rb)
        self.reduces[ra] += self.reduces.take(rb)
        return ra

    def duplicate(self, p: int, roots: set[int]) -> None:
        """``p`` (a group of its own) is recomputed in every group of ``roots`` and is no kernel any more."""
        rp = self.find(p)
        assert self.members[rp] == [p]
        for r in roots:
            self.copies[r].add(p)
        self.copied_in[p] = set(roots)
        del self.parent[p], self.members[rp]
        for lazy in (self.copies, self.kinds, self.reduces):
            lazy.pop(rp, None)

    def readers(self, vid: int) -> tuple[set[int], set[int]] | None:
        """(the groups reading value ``vid``, the reader ops in them), looking through views and broadcasts that
        are no kernel of their own; None when something that is no fusible kernel reads it (or it is an output)."""
        graph, cls = self.graph, self.cls
        groups: set[int] = set()
        ops: set[int] = set()
        stack, seen = [vid], set()
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            if v in graph.outputs or v in graph.escaping:
                return None
            for u in self.users.get(v, ()):
                if u in self.parent:
                    groups.add(self.find(u))
                    ops.add(u)
                elif u in self.copied_in:
                    groups.update(self.find(r) for r in self.copied_in[u])
                    ops.add(u)
                elif cls.get(u) in ("view", "generator"):
                    stack.extend(graph.ops[u].results)
                else:
                    return None
        return groups, ops


def _splits_k(target) -> bool:
    """Whether XLA:GPU compiles small-output GEMMs for this chip with split-K (Hopper and later do; measured on
    deviceless compiles for the h100_sxm and a100_sxm configs: see ``benchmarks/fusion_patterns_xla.py``)."""
    compiler = getattr(target, "compiler", None)
    cc = (compiler.get("cuda_compute_capability", "") if compiler is not None else "") or "9.0"
    try:
        return int(str(cc).split(".")[0]) >= 9
    except ValueError:
        return True


def _gemm_epilogues(program, st: "_State", forbid: set[Edge], made: set[Edge], split_k: bool,
                    flavour: str = "gpu") -> frozenset[int]:
    """XLA:GPU's GEMM fusions take the cheap elementwise ops after a matmul (scale, bias, residual add, ReLU, an
    output convert) for as long as each is the only reader of the value before it and keeps its shape; an op
    with a transcendental (GELU's tanh), a reduction or a second reader ends the chain. A GEMM XLA splits along
    K (``split_k``: ``split_k_factor`` of its shape above 1) writes partial sums that
    a reduction kernel adds up, and that kernel takes the epilogue instead. XLA:TPU's output fusion takes any
    elementwise op on the same terms, transcendentals included (``flavour="tpu"``: a bias add and GELU), before
    its loop fusion can duplicate them into the readers of the result (pattern ``dot_bias_ln``: the bias add
    stays with the matmul while the f32 convert after it is recomputed by every reader)."""
    graph, cls = program.graph, st.cls
    split: set[int] = set()
    for m in sorted(o for o in st.parent if cls[o] == "matmul"):
        if st.members[st.find(m)] != [m]:
            continue
        g = program.works[m].gemm
        if split_k and g is not None and split_k_factor(g.m, g.n, g.k, g.batch) > 1:
            split.add(m)
            continue
        last, elements = m, graph.values[graph.ops[m].results[0]].elements
        batch = len((graph.ops[m].attrs.get("dot_dimension_numbers") or {}).get("lhs_batch", ()))
        while True:
            got = st.readers(graph.ops[last].results[0]) if len(graph.ops[last].results) == 1 else None
            if got is None or len(got[1]) != 1:
                break
            (u, ) = got[1]
            op = graph.ops[u]
            if not st.owned(u) or st.members[st.find(u)] != [u] or (last, u) in forbid or op.frames != graph.ops[m].frames:
                break
            if len(op.results) != 1 or graph.values[op.results[0]].elements != elements:
                break
            # an output layout the GEMM can write: batch dimensions stay in front (XLA:TPU's layout assignment
            # writes a matmul's result in any order: the attention's head transpose after the P.V matmul)
            absorbed_transpose = (op.name == "stablehlo.transpose"
                                  and (flavour == "tpu"
                                       or tuple(op.attrs.get("permutation", ()))[:batch] == tuple(range(batch))))
            cheap = (cls[u] == "elementwise" and (flavour == "tpu" or not _expensive(program, u, "gpu"))
                     and graph.values[op.results[0]].nbytes <= graph.values[graph.ops[last].results[0]].nbytes)
            if not (cheap or absorbed_transpose):
                break
            st.union(m, u)
            made.add((last, u))
            last = u
    return frozenset(split)


def _computed_from_nothing(program, cls: dict[int, str], flavour: str) -> frozenset[int]:
    """Values a kernel can compute without reading memory: iotas and constants, and cheap elementwise or data
    movement ops of those only (a causal mask from two iotas). Recomputing them anywhere reads nothing."""
    graph = program.graph
    free: set[int] = set()
    for op in graph.ops:
        c = cls.get(op.id)
        if c is None or op.frames != () and c != "generator":
            continue
        if c == "generator" or (c in ("elementwise", "movement", "view") and not _expensive(program, op.id, flavour)):
            if all(v in free for v in op.operands):
                free.update(op.results)
    return frozenset(free)


def _input_bytes(program, oid: int, free: frozenset[int] = frozenset()) -> float:
    """Bytes an op reads from memory when it is its own kernel (operands made by broadcasts count their source;
    values in ``free``, computed from nothing, count nothing)."""
    graph = program.graph
    total = 0.0
    op = graph.ops[oid]
    if op.name in PARTIAL_READERS and op.name not in IN_PLACE_ROOTS:
        # a slice / gather reads what it returns (and its indices)
        return _output_bytes(program, oid) + sum(graph.values[v].nbytes for v in op.operands[1:] if v not in free)
    for v in op.operands:
        if v in free:
            continue
        p = graph.producers.get(v)
        if p is not None and graph.ops[p].name in GENERATORS:
            total += sum(graph.values[u].nbytes for u in graph.ops[p].operands if u not in free)
        else:
            total += graph.values[v].nbytes
    return total


def _output_bytes(program, oid: int) -> float:
    return float(sum(program.graph.values[r].nbytes for r in program.graph.ops[oid].results))


def _expensive(program, oid: int, flavour: str) -> bool:
    op = program.graph.ops[oid]
    if op.name not in EXPENSIVE:
        return False
    if flavour == "gpu" and op.name in GPU_CHEAP_IN_F32:
        dtypes = {program.graph.values[r].dtype for r in op.results}
        return not dtypes <= {"f32", "f16"}
    return True


_FACTS: dict[tuple[int, str], tuple[Any, tuple]] = {}


_PHASE1: dict[tuple, tuple] = {}


def _phase1_replay(key: tuple, program, target, forbid: frozenset, made: frozenset, split: frozenset
                   ) -> tuple[list, float]:
    """(the remembered producer-fusion decisions to replay, the producer from which to decide afresh): every
    decision for a producer after all the edges in which this run's forbidden set differs from the remembered
    run's, when step 0 made the same edges (else nothing to replay, decide from the last producer on)."""
    hit = _PHASE1.get(key)
    if hit is None or hit[0] is not program or hit[1] is not target or hit[3] != made or hit[4] != split:
        return [], math.inf
    differ = forbid ^ hit[2]
    resume = max((a for a, _ in differ), default=-1)
    return [a for a in hit[5] if a[0] > resume], resume


def _remember_phase1(key: tuple, program, target, forbid: frozenset, made: frozenset, split: frozenset,
                     actions: list) -> None:
    while len(_PHASE1) >= 4:
        _PHASE1.pop(next(iter(_PHASE1)))
    _PHASE1[key] = (program, target, forbid, made, split, tuple(actions))


GEMM_REWRITE_MIN_ELEMENTS = 10_000_000    # XLA:GPU's algebraic simplifier (IsMatrixMultiplicationTooSmallForRewriting)


def _strength_reduced(graph, o: int) -> bool:
    """Whether XLA:GPU rewrites this dot as a reduction of a multiply instead of running a GEMM: one operand is a
    vector (only batch and contracting dimensions: a matrix-vector product per batch) and both are, or the
    operand matrices (non-contracting x contracting, each) hold fewer than ``GEMM_REWRITE_MIN_ELEMENTS`` elements
    together (its ``ShouldStrengthReduceDotToReduce``). A MoE layer's combine, tokens x experts against each
    token's expert weights, is one: a reduction fusion reading the experts' outputs in any layout, no GEMM."""
    op = graph.ops[o]
    dn = op.attrs.get("dot_dimension_numbers")
    if op.name != "stablehlo.dot_general" or not dn or len(op.operands) < 2:
        return False
    lhs, rhs = (graph.values[v].shape for v in op.operands[:2])
    lhs_vector = len(dn["lhs_batch"]) + len(dn["lhs_contract"]) == len(lhs)
    rhs_vector = len(dn["rhs_batch"]) + len(dn["rhs_contract"]) == len(rhs)
    if not (lhs_vector or rhs_vector):
        return False
    if lhs_vector and rhs_vector:
        return True
    k = math.prod(lhs[d] for d in dn["lhs_contract"])
    free = lambda shape, batch, contract: math.prod(  # noqa: E731
        n for d, n in enumerate(shape) if d not in batch and d not in contract)
    return (free(lhs, dn["lhs_batch"], dn["lhs_contract"]) + free(rhs, dn["rhs_batch"], dn["rhs_contract"])) * k \
        < GEMM_REWRITE_MIN_ELEMENTS


def _program_facts(program, flavour: str) -> tuple[dict[int, str], tuple[int, ...], frozenset[int], dict[int, int],
                                                 tuple[int, ...]]:
    """What ``decide`` starts from and no option changes: each live op's class, the ops that are kernels, the values
    computed from nothing, each kernel op's loop size, the values several kernel ops read. Kept for the last few
    programs (read only): workflows re-run the pass with one edge forbidden at a time (``fusion_decisions``)."""
    key = (id(program), flavour)
    hit = _FACTS.get(key)
    if hit is not None and hit[0] is program:
        return hit[1]
    graph = program.graph
    live = [op.id for op in graph.ops if program.works[op.id] is not None and program.weights[op.id] > 0]
    cls = {o: op_class(program, o) for o in live}
    if flavour == "gpu":
        for o in live:
            if cls[o] == "matmul" and _strength_reduced(graph, o):
                cls[o] = "reduce"
    users = graph.consumers()
    kernel_ops = tuple(o for o in live if (program.works[o].launches_kernel and cls[o] not in ("generator", "view"))
                       or (cls[o] == "generator" and materialised(program, o, cls, users)))
    free = _computed_from_nothing(program, cls, flavour)
    space = {o: space_of(program, o) for o in kernel_ops}
    # the values (not scalars) two or more kernel ops read, ascending: only their readers can be sibling groups (a
    # group is made of kernel ops, and fusion takes ops out of groups, never adds kernels)
    kernel = set(kernel_ops)
    shared_reads = tuple(v for v in sorted(users) if graph.values[v].elements > 1
                         and sum(1 for u in users[v] if u in kernel) >= 2)
    facts = (cls, kernel_ops, free, space, shared_reads)
    while len(_FACTS) >= 4:
        _FACTS.pop(next(iter(_FACTS)))
    _FACTS[key] = (program, facts)
    return facts


def decide(program, target, forbid: set[Edge], force: Iterable[Edge], multi_output: bool = True,
           matmul_epilogue: bool = True, aggressive: bool = False) -> Fusion:
    """The groups XLA would make of ``program`` on ``target``'s kind of chip (see the module docstring).
    ``matmul_epilogue=False`` keeps a TPU's matmul epilogues apart too; ``multi_output=False`` skips step 3.

    ``aggressive``: what a hand-written kernel library does beyond the compiler, bounded by the chip's on-chip
    memory: every matmul takes its elementwise epilogue, normalization diamonds become one kernel on any chip, and
    a matmul whose operand is computed (elementwise, or a row softmax) from another matmul's result fuses with it
    when one tile of each fits in a matrix unit's share of on-chip memory (FlashAttention's working set: the
    second matmul streams over the first one's output, which never leaves the chip)."""
    graph = program.graph
    force = tuple(force)
    flavour = flavour_of(target)
    cls, kernel_ops, free, space, shared_reads = _program_facts(program, flavour)
    users = graph.consumers()
    st = _State(program, cls, kernel_ops)
    made: set[Edge] = set()

    tpu = flavour == "tpu" and not aggressive

    def group_space(root: int) -> int:
        return max(space[o] for o in st.members[root])

    def can_fuse(p: int, root: int, reader_ops: set[int], k: int) -> bool:
        cp, kinds = cls[p], st.kinds[root]
        members = st.members[root]
        if graph.ops[members[0]].frames != graph.ops[p].frames:
            return False
        if any((p, u) in forbid for u in reader_ops):
            return False
        if cp in ("opaque", "root", "view"):
            return False
        if "opaque" in kinds:
            return False
        if tpu and any(graph.ops[u].name in TPU_OPERAND_BARRIERS for u in reader_ops):
            return False
        if cp == "matmul":
            # an epilogue, into one elementwise consumer: XLA:TPU's output fusion (and a kernel library's); XLA:GPU's
            # GEMM fusions take cheap epilogues only (scale, bias, ReLU, a convert; an activation with a
            # transcendental, such as GELU, stays a kernel of its own)
            # (on a GPU the epilogue is decided before everything else: step 0); XLA:TPU's output fusion also
            # takes a reduction of the result (patterns ``dot_widen_reduce``, ``dot_sum0``, ``dot_max1``)
            if not (matmul_epilogue and k == 1) or kinds & {"matmul", "root"} or ("reduce" in kinds and not tpu):
                return False
            return flavour == "tpu" or aggressive
        if cp == "reduce":
            # XLA:GPU fuses a reduction's result only into consumers that keep its shape (its epilogue);
            # XLA:TPU keeps a reduction a kernel of its own
            if flavour == "tpu" or st.reduces[root] or "matmul" in kinds or "root" in kinds:
                return False
            out = graph.values[graph.ops[p].results[0]].elements
            return group_space(root) == out
        if "matmul" in kinds:
            # a prologue is re-read per tile of the matmul: only when it does not make the operand bigger to read
            # (and on a GPU, only what a GEMM fusion's operand loads can do: no concatenate, pad, gather, reverse);
            # XLA:TPU's convolution fusion takes any elementwise prologue, whatever it reads (several inputs, an f32
            # weight's convert: patterns ``prologue_add_two_inputs``, ``pro_weight_convert``), but no reverse or
            # gather
            if tpu:
                if graph.ops[p].name in NO_TPU_PROLOGUE:
                    return False
            elif "reduce" in kinds or _input_bytes(program, p, free) > _output_bytes(program, p):
                return False
            if flavour == "gpu" and not aggressive and graph.ops[p].name in NO_GEMM_PROLOGUE:
                return False
        if "root" in kinds:
            # an in-place update takes the producers of its update, not of the buffer it updates
            for u in reader_ops:
                op = graph.ops[u]
                if op.name in IN_PLACE_ROOTS and op.operands and graph.producers.get(op.operands[0]) == p:
                    return False
        return True

    def duplicable(p: int, k: int) -> bool:
        if cls[p] not in ("elementwise", "movement", "generator"):
            return False
        if _expensive(program, p, flavour) and not tpu:
            return False                   # XLA:TPU recomputes transcendentals too (exp, tanh: GELU, softmax)
        read, written = _input_bytes(program, p, free), _output_bytes(program, p)
        # recomputed in k consumers (each reads p's inputs) against p's own kernel (reads them once, writes its
        # result) and k reads of that result; XLA:TPU recomputes only when that moves fewer bytes (the softmax
        # gradient, read by the two matmuls of dQ and dK, is written once: GPT-2's attention backward)
        if tpu:
            return k * read < read + written + k * written
        return k * read <= read + written + k * written

    def broadcast_read(p: int) -> bool:
        """XLA:TPU fuses no producer that reads memory into a consumer that reads it through a broadcast (a
        small vector scaled, a layer norm's statistics: patterns ``small_chain_bcast``, ``red_scale_bcast``)."""
        if all(r in free for r in graph.ops[p].results):
            return False
        return any(_widening_broadcast_reader(program, st, r) for r in graph.ops[p].results)

    # 0. a matmul's epilogue: the chain of (on a GPU cheap) elementwise ops that alone read its result
    split: frozenset[int] = frozenset()
    if flavour == "gpu" and matmul_epilogue and not aggressive:
        split = _gemm_epilogues(program, st, forbid, made, split_k=_splits_k(target))
    elif tpu and matmul_epilogue:
        _gemm_epilogues(program, st, forbid, made, split_k=False, flavour="tpu")

    # 1. producer fusion into all consumers, from the end of the program to its start. A run that differs from a
    # remembered one (same program, target and options, the same step 0) only in edges whose producers come before
    # ``resume`` replays the remembered decisions for every later producer: a forbidden edge changes nothing until
    # its producer's turn (``fusion_decisions`` forbids one edge at a time)
    log_key = (id(program), id(target), multi_output, matmul_epilogue, aggressive, tuple(force))
    replay, resume = _phase1_replay(log_key, program, target, frozenset(forbid), frozenset(made), split)
    actions: list[tuple[int, tuple[int, ...], tuple[Edge, ...]]] = []
    for p, roots, edges in replay:
        if len(roots) == 1:
            st.union(p, roots[0])
        else:
            st.duplicate(p, set(roots))
        made.update(edges)
    made_after_step0 = frozenset(made) if not replay else None
    for p in sorted((o for o in kernel_ops if o <= resume), reverse=True):
        if not st.owned(p) or st.members[st.find(p)] != [p]:
            continue
        found: set[int] = set()
        reader_ops: set[int] = set()
        ok = True
        for r in graph.ops[p].results:
            got = st.readers(r)
            if got is None:
                ok = False
                break
            found |= got[0]
            reader_ops |= got[1]
        found.discard(st.find(p))
        if not ok or not found:
            continue
        k = len(found)
        by_root: dict[int, set[int]] = {}
        for u in reader_ops:
            roots = [st.find(x) for x in st.copied_in[u]] if u in st.copied_in else [st.find(u)]
            for r in roots:
                by_root.setdefault(r, set()).add(u)
        if not all(can_fuse(p, r, by_root.get(r, set()), k) for r in found):
            continue
        if tpu and broadcast_read(p):
            continue
        if k == 1:
            (root,) = found
            st.union(p, root)
        elif duplicable(p, k):
            st.duplicate(p, found)
        else:
            continue
        made.update((p, u) for u in reader_ops)
        actions.append((p, tuple(sorted(found)), tuple(sorted((p, u) for u in reader_ops))))
    if made_after_step0 is not None:
        _remember_phase1(log_key, program, target, frozenset(forbid), made_after_step0, split, actions)

    for p, c in force:
        if st.owned(p) and st.owned(c) and st.find(p) != st.find(c):
            st.union(p, c)
            made.add((p, c))

    order = _Order(program, st)
    if flavour == "gpu" or aggressive:
        _row_softmax(program, st, order, space, made, forbid)
    if aggressive and target is not None:
        _flash_chains(program, st, order, made, forbid, target)
    if tpu and matmul_epilogue:
        _matmul_outputs(program, st, order, space, made, forbid)
    if multi_output:
        _producer_consumer(program, st, order, space, made, forbid)
        _siblings(program, st, order, space, made, shared_reads, flavour="tpu" if tpu else "gpu")
    roots = sorted(st.members, key=lambda r: min(st.members[r]))
    relayout = _layout_copies(program, st) if flavour == "gpu" and not aggressive else []
    return Fusion(groups=[sorted(st.members[r]) for r in roots], copies=[frozenset(st.copies[r]) for r in roots],
                  made=made, layout_copies=relayout, split_k=split)


def gemm_ready(shape_rank: int, batch: tuple[int, ...], contract: tuple[int, ...]) -> bool:
    """Whether a matmul operand's dimension order is one a GPU GEMM reads as it is: its batch dimensions lead, in
    order, and its contracting dimensions are one block at either end of the rest (a row- or column-major
    matrix per batch element). Any other order needs a transposing copy first (XLA:GPU's layout assignment)."""
    nb = len(batch)
    if tuple(batch) != tuple(range(nb)):
        return False
    rest = list(range(nb, shape_rank))
    c = sorted(contract)
    if not c:
        return True
    block = list(range(c[0], c[0] + len(c)))
    return c == block and (c[0] == nb or c[-1] == shape_rank - 1) and all(d in rest for d in c)


def _layout_copies(program, st: "_State") -> list[tuple[int, int]]:
    """The matmul operands that a copy must first transpose for a GPU GEMM (see ``gemm_ready``): those that no
    loop kernel of ours writes (a program input, a matmul's or a reduction's result, a loop's), since a loop kernel
    would write the layout the matmul wants at no extra cost. One copy per buffer (the first matmul that needs it),
    and one back for a relaid buffer the program returns. Pairs of (value copied, the op it follows or precedes)."""
    graph, cls = program.graph, st.cls
    out: list[tuple[int, int]] = []
    seen: set[int] = set()
    roots = alias_roots(graph)
    for m in sorted(o for o in st.parent if cls[o] == "matmul"):
        op = graph.ops[m]
        dn = op.attrs.get("dot_dimension_numbers")
        if op.name != "stablehlo.dot_general" or not dn:
            continue
        mine = st.find(m)
        for i, (batch, contract) in enumerate(((dn["lhs_batch"], dn["lhs_contract"]),
                                               (dn["rhs_batch"], dn["rhs_contract"]))):
            v = op.operands[i]
            if gemm_ready(len(graph.values[v].shape), tuple(batch), tuple(contract)):
                continue
            # through the matmul's own prologue (a slice of a cache, a convert) to the buffer it reads: the
            # layout it needs carries back to that buffer
            p = producer_through_views(graph, v, cls)
            for _ in range(16):
                inside = p is not None and ((st.owned(p) and st.find(p) == mine)
                                            or (p in st.copied_in and mine in {st.find(r) for r in st.copied_in[p]}))
                if not inside:
                    break
                big = max(graph.ops[p].operands, key=lambda u: graph.values[u].nbytes, default=None)
                if big is None:
                    break
                v, p = big, producer_through_views(graph, big, cls)
            if p is not None:
                if st.owned(p) and st.find(p) == mine:
                    continue
                if st.owned(p) and not st.kinds[st.find(p)] - {"elementwise", "movement"}:
                    continue          # a loop kernel writes it in the matmul's layout at no extra cost
                if cls.get(p) == "generator" or (p in st.copied_in):
                    continue
            buffer = roots.get(v, v)   # in-place updates (a cache's) keep the buffer and its layout
            if buffer not in seen:     # laid out once, for every matmul that reads it
                seen.add(buffer)
                out.append((v, m))
    # a relaid buffer the program returns goes back to the default layout at the end
    for o in graph.outputs:
        p = graph.producers.get(o)
        if roots.get(o, o) in seen and p is not None:
            out.append((o, p))
    return out


class _Order:
    """The kernel graph (groups, and the loops / branches no group holds) in a topological order kept valid
    through merges, so that "would merging these two make a cycle?" is a search bounded by the order.

    After producer fusion every group's outputs come from its last op (a producer joins a group only when that
    group is its single reader; duplicated producers live inside their readers), so ordering groups by their last
    op is topological. A merge of ``first`` into a later ``second`` is refused when a path leaves ``first`` through
    another node and reaches ``second``; otherwise the nodes reachable from ``first`` that sit before ``second`` move
    just after the merged group (Pearce and Kelly's dynamic topological order, for a contraction)."""

    def __init__(self, program, st: _State):
        self.program, self.st = program, st
        graph = program.graph
        barriers = [-1 - op.id for op in graph.ops if not st.owned(op.id) and op.id not in st.copied_in
                    and st.cls.get(op.id) not in ("view", "generator") and op.results]
        nodes = list(st.members) + barriers
        order = sorted(nodes, key=lambda n: (max(st.members[n]) if n >= 0 else -1 - n, n))
        # the order as a doubly linked list with increasing keys (``index``: node -> key, compared, never a
        # position): a merge moves only the nodes it must, each given a key in the gap after the merged group,
        # instead of rewriting every position between the two groups (quadratic in the program)
        self.index: dict[int, float] = {n: float(i) for i, n in enumerate(order)}
        self._next: dict[int, int | None] = {n: (order[i + 1] if i + 1 < len(order) else None)
                                             for i, n in enumerate(order)}
        self._prev: dict[int, int | None] = {n: (order[i - 1] if i else None) for i, n in enumerate(order)}
        self._head = order[0] if order else None
        self._succ: dict[int, set[int]] = {}

    def node(self, n: int) -> int:
        return self.st.find(n) if n >= 0 else n

    def succ(self, n: int) -> set[int]:
        if n not in self._succ:
            self._succ[n] = _group_readers(self.program, self.st, n)
        return {self.node(x) for x in self._succ[n]}

    def merge(self, a: int, b: int, direct_edge_ok: bool, limit: int = 20000) -> int | None:
        """Merge groups ``a`` and ``b`` when that keeps the kernel graph acyclic (and, unless ``direct_edge_ok``,
        when neither reads the other); returns the merged root, or None (nothing changed)."""
        st = self.st
        a, b = st.find(a), st.find(b)
        if a == b:
            return None
        first, second = (a, b) if self.index[a] < self.index[b] else (b, a)
        bound = self.index[second]
        succ_first = self.succ(first)
        if second in succ_first and not direct_edge_ok:
            return None
        moved: list[int] = []
        seen: set[int] = set()
        # latest first: a path to ``second`` climbs the order, so a merge that would make a cycle is refused after a
        # few steps instead of a walk over everything between the two (the answer is the same either way)
        index = self.index
        heap = [(-index[x], x) for x in succ_first if x != second and index[x] <= bound]
        heapq.heapify(heap)
        while heap:
            _, x = heapq.heappop(heap)
            if x == second:
                return None              # a path through another node: merging would make a cycle
            if x in seen:
                continue
            seen.add(x)
            if len(seen) > limit:
                return None
            moved.append(x)
            for y in self.succ(x):
                if y not in seen and index[y] <= bound:
                    heapq.heappush(heap, (-index[y], y))
        # the merged group takes ``second``'s place; what ``first`` reaches before it moves just after it, in order
        moved.sort(key=index.__getitem__)
        self._unlink(first)
        for x in moved:
            self._unlink(x)
        root = st.union(first, second)
        if root != second:                 # the root's id takes over second's place in the list
            self._replace(second, root)
        index.pop(first if root != first else second, None)
        self._insert_after(root, moved)
        self._succ.pop(first, None)
        self._succ.pop(second, None)
        return root

    def _join(self, a: int | None, b: int | None) -> None:
        """``b`` right after ``a`` in the list (``a`` None: ``b`` is the head; ``b`` None: ``a`` is the tail)."""
        if a is None:
            self._head = b
        else:
            self._next[a] = b
        if b is not None:
            self._prev[b] = a

    def _unlink(self, n: int) -> None:
        self._join(self._prev.pop(n), self._next.pop(n))

    def _replace(self, old: int, new: int) -> None:
        p, q = self._prev.pop(old), self._next.pop(old)
        self._join(p, new)
        self._join(new, q)
        self.index[new] = self.index[old]

    def _insert_after(self, at: int, nodes: list[int]) -> None:
        """``nodes`` (in this order) just after ``at``, with keys evenly in the gap before ``at``'s successor;
        the keys from ``at`` on respaced (``_respace``) when that gap is too narrow."""
        if not nodes:
            return
        q = self._next[at]
        lo = self.index[at]
        hi = self.index[q] if q is not None else lo + len(nodes) + 1.0
        step = (hi - lo) / (len(nodes) + 1)
        prev = at
        for i, n in enumerate(nodes):
            self._join(prev, n)
            self.index[n] = lo + step * (i + 1)
            prev = n
        self._join(prev, q)
        if step < 1e-6:
            self._respace(at)

    def _respace(self, start: int) -> None:
        """Spread the keys of the nodes from ``start`` on until they are >= 1 apart: walk on until the nodes
        walked span at least twice their count of keys, and space them evenly over it (the same order; the
        nodes before ``start`` and after the walk keep theirs)."""
        walked = [start]
        n = self._next[start]
        while True:
            span = (self.index[n] - self.index[start]) if n is not None else 2.0 * len(walked)
            if span >= 2.0 * len(walked):
                break
            walked.append(n)
            n = self._next[n]
        base, gap = self.index[start], span / len(walked)
        for i, x in enumerate(walked):
            self.index[x] = base + gap * i


def _row_softmax(program, st: _State, order: _Order, space, made: set[Edge], forbid: set[Edge]) -> None:
    """XLA:GPU's Triton normalization fusion (softmax, layer norm): a reduction over the rows' last dimension
    and the kernels that read both its result and the rows it reduced (a "diamond") become one kernel that keeps a
    row on chip, for rows of at most ``TRITON_ROW_LIMIT`` elements. Chains of diamonds (softmax's max, then its
    sum) merge one after the other."""
    graph = program.graph
    changed = True
    while changed:
        changed = False
        for r_op in sorted(st.parent):
            if not st.owned(r_op) or st.cls[r_op] != "reduce" or graph.ops[r_op].name != "stablehlo.reduce":
                continue
            op = graph.ops[r_op]
            x = graph.values[op.operands[0]]
            dims = tuple(op.attrs.get("dimensions") or ())
            if dims != (len(x.shape) - 1,) or not x.shape or x.shape[-1] > TRITON_ROW_LIMIT:
                continue
            if st.kinds[st.find(r_op)] & {"matmul", "opaque", "root"}:
                continue
            got = st.readers(op.results[0])
            if got is None:
                continue
            row_groups: set[int] = set()
            for base in _row_sources(program, st, op.operands[0]):
                seen_rows = st.readers(base)
                if seen_rows is not None:
                    row_groups |= seen_rows[0]
            for c in sorted(got[0] & row_groups):
                c, home = st.find(c), st.find(r_op)
                if c == home or st.kinds[c] & {"matmul", "opaque", "root"}:
                    continue
                if graph.ops[st.members[c][0]].frames != op.frames:
                    continue
                if _hero_space(program, st, space, c) != x.elements:
                    continue
                if any((r_op, u) in forbid for u in got[1]):
                    continue
                fused = [u for u in got[1] if st.owned(u) and st.find(u) == c]
                if order.merge(home, c, direct_edge_ok=True) is not None:
                    made.update((r_op, u) for u in fused)
                    changed = True


def _flash_chains(program, st: _State, order: _Order, made: set[Edge], forbid: set[Edge], target) -> None:
    """Aggressive only: matmul -> (elementwise / row softmax) -> matmul chains as one kernel when a tile of the
    chain fits on chip. With (tm, tn) the target's matrix tile, the first matmul ``[m, k1] x [k1, n1]`` and the second
    ``[m, n1] x [n1, n2]`` streamed over n1, a matrix unit holds a tile of the first one's inputs, of its output and
    of the second one's input: ``(tm k1 + tn k1 + tn n2)`` operand elements (scores and accumulators stay in
    registers). Attention
    (k1 = n2 = head dim) fits; an MLP (k1 = d_model, n2 = d_model) does not.

    The second matmul's operand may be computed from several such matmuls of one shape: FlashAttention's backward
    recomputes the scores ``Q K^T``, forms ``dP = dO V^T`` beside them, and contracts ``dS = P * (dP - D)`` into dQ
    and dK, and ``P`` into dV, all in one kernel that reads Q, K, V, dO and writes dQ, dK, dV (Dao 2023,
    Algorithm 2); each first matmul's tile must fit as above."""
    graph = program.graph
    on_chip = target.on_chip
    if on_chip is None:
        return
    per_unit = on_chip.capacity_bytes / max(1, int(target.compute.matrix_units))
    tm, tn = int(target.compute.matrix_tile[0]), int(target.compute.matrix_tile[1])
    matmuls = [o for o in sorted(st.parent) if st.cls[o] == "matmul" and program.works[o].gemm is not None]
    for m2 in matmuls:
        if not st.owned(m2):
            continue
        g2 = program.works[m2].gemm
        for side, v in enumerate(graph.ops[m2].operands[:2]):
            src = _matmuls_feeding(program, st, v)
            if src is None:
                continue
            firsts, between = src
            n2 = g2.n if side == 0 else g2.m      # the second matmul's width that is not the first one's rows

            def fits(m1: int) -> bool:
                g1 = program.works[m1].gemm
                if g1 is None or g1.batch != g2.batch or (m1, m2) in forbid:
                    return False
                x = graph.values[graph.ops[m1].operands[0]]
                itemsize = max(1, x.nbytes // max(1, x.elements))
                # the operand tiles stream through on-chip memory; the score tile and the accumulator stay in
                # registers (assumption: a register file at least as large as the tiles, as on every GPU and TPU core)
                return itemsize * (tm * g1.k + tn * g1.k + tn * n2) <= per_unit

            if not all(fits(m1) for m1 in firsts):     # (``_matmuls_feeding`` returns first matmuls of one shape)
                continue
            groups = {st.find(m2)} | {st.find(f) for f in firsts} | {st.find(b) for b in between}
            chain = sorted(groups, key=lambda g: order.index[g])     # merge in topological order
            root = chain[0]
            ok = True
            for nxt in chain[1:]:
                if st.find(nxt) == st.find(root):
                    continue
                merged = order.merge(root, nxt, direct_edge_ok=True)
                if merged is None:
                    ok = False
                    break
                root = merged
            if ok:
                made.update((m1, m2) for m1 in firsts)
            break


def _matmuls_feeding(program, st: _State, vid: int, depth: int = 64) -> tuple[list[int], list[int]] | None:
    """The matmuls whose results ``vid`` is computed from through elementwise / row-softmax groups (no matmul
    between), and those groups' members met on the way; None when there is none."""
    graph = program.graph
    between: list[int] = []
    stack, seen = [vid], set()
    found: set[int] = set()
    while stack and len(seen) < 4096:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        p = graph.producers.get(v)
        if p is None:
            continue
        cls = st.cls.get(p)
        if cls == "matmul":
            # FlashAttention's backward has two first matmuls of one shape (the scores, dO V^T); a third, or one of
            # another shape (a residual stream reaching back into the layers before), is no chain: stop walking
            size = graph.values[graph.ops[p].results[0]].elements
            if any(graph.values[graph.ops[f].results[0]].elements != size for f in found) or len(found | {p}) > 2:
                return None
            found.add(p)
            continue
        if cls in ("opaque", "root", None):
            continue
        if st.owned(p):
            between.append(p)
        stack.extend(graph.ops[p].operands)
    return (sorted(found), between) if found else None


def _row_sources(program, st: _State, vid: int, depth: int = 8) -> list[int]:
    """``vid`` and the values it is computed from by single-operand elementwise ops (converts, exp, ...): the rows a
    reduction reduces, however many casts sit between them and the reduction (softmax's sum reduces an f32 copy
    of the exponentials its division reads in bf16)."""
    graph = program.graph
    out = [vid]
    for _ in range(depth):
        p = graph.producers.get(out[-1])
        if p is None or st.cls.get(p) not in ("elementwise", "view") or len(graph.ops[p].operands) != 1:
            break
        out.append(graph.ops[p].operands[0])
    return out


def _group_space(st: _State, space: dict[int, int], root: int) -> int:
    return max(space[o] for o in st.members[root])


def _producer_consumer(program, st: _State, order: _Order, space, made: set[Edge], forbid: set[Edge]) -> None:
    """A loop group that could not be fused into all its readers (several of them, or its result is also a program
    output) is fused into one reader with the same loop shape, its result also written out (XLA's producer-consumer
    multi-output fusion). Never into a matmul group; never two reductions; never when a path from the producer
    through another group comes back to the reader (a cycle)."""
    graph = program.graph
    forbidden_from = {a for a, _ in forbid}
    for root in sorted(list(st.members), key=lambda r: -max(st.members[r])):
        if root not in st.members:
            continue
        if st.kinds[root] & {"matmul", "opaque", "root"} or st.reduces[root]:
            continue             # a reduction's epilogue is step 2's decision (and a TPU's reductions stand alone)
        readers = {g for g in order.succ(root) if g >= 0}
        if not readers:
            continue
        members = list(st.members[root])
        mine = _group_space(st, space, root)
        current = root
        # into every reader that qualifies, one after the other: the producer and all its readers of its loop
        # shape become one kernel (the readers of a layer's shared activation computed once)
        for c in sorted(readers, key=lambda r: min(st.members[r])):
            c, current = st.find(c), st.find(current)
            if c == current or st.kinds[c] & {"matmul", "opaque", "root"}:
                continue
            if graph.ops[st.members[c][0]].frames != graph.ops[members[0]].frames:
                continue
            inside = set(st.members[c]) | st.copies[c]
            if not forbidden_from.isdisjoint(members) and any((o, u) in forbid for o in members for u in inside):
                continue
            if _hero_space(program, st, space, c) != mine:
                continue
            first_reader = min(inside)
            merged = order.merge(current, c, direct_edge_ok=True)
            if merged is not None:
                made.add((min(members), first_reader))
                current = merged


def _root_dtype(graph, st: _State, root: int) -> str:
    """The element type a group's kernel writes: its last op's (the fusion's root)."""
    last = graph.ops[max(st.members[root])]
    return graph.values[last.results[0]].dtype if last.results else ""


def _widening_broadcast_reader(program, st: _State, vid: int) -> bool:
    """Whether some kernel reads ``vid`` through a broadcast to more elements (looking through views)."""
    graph = program.graph
    stack, seen = [vid], set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        for u in st.users.get(v, ()):
            op = graph.ops[u]
            c = st.cls.get(u)
            if c == "generator":
                if op.results and graph.values[op.results[0]].elements > graph.values[v].elements:
                    return True
                stack.extend(op.results)
            elif c == "view":
                stack.extend(op.results)
    return False


def _matmul_outputs(program, st: _State, order: _Order, space, made: set[Edge], forbid: set[Edge]) -> None:
    """XLA:TPU's multi-output output fusion: a matmul's kernel takes the kernels that read its result and loop over
    its shape (elementwise consumers, reductions of the result), one after the other in program order, and its
    result is written only when something else still reads it (patterns ``dot_two_readers``, ``dot_three_readers``,
    ``siblings_of_dot_reductions``; a layer norm's two sums in the matmul before it). The readers it takes write one
    element type: a bf16 loop and an f32 sum of the result do not both join (``dot_mul_and_sum``: the first one in
    program order does); never another matmul, never a cycle."""
    graph = program.graph
    matmul_roots = sorted({st.find(o) for o in st.parent if st.cls[o] == "matmul"}, key=lambda r: min(st.members[r]))
    for root in matmul_roots:
        if root not in st.members:
            continue
        m = min(o for o in st.members[root] if st.cls[o] == "matmul")
        frames = graph.ops[m].frames
        loop = max((space[o] for o in st.members[root] if st.cls[o] != "reduce"), default=space[m])
        current, written = root, None
        readers = {g for g in order.succ(root) if g >= 0}
        for c in sorted(readers, key=lambda r: min(st.members[r])):
            c, current = st.find(c), st.find(current)
            if c == current or st.kinds[c] & {"matmul", "opaque", "root"}:
                continue
            if graph.ops[st.members[c][0]].frames != frames or _hero_space(program, st, space, c) != loop:
                continue
            inside = set(st.members[c]) | st.copies[c]
            mine = set(st.members[current])
            if any((o, u) in forbid for o in mine for u in inside):
                continue
            dtype = _root_dtype(graph, st, c)
            if written is not None and dtype != written:
                continue
            merged = order.merge(current, c, direct_edge_ok=True)
            if merged is not None:
                made.add((m, min(inside)))
                current, written = merged, dtype


def _is_fusion(graph, st: _State, root: int) -> bool:
    """More than one op: several members, recomputed producers, or a broadcast / iota / constant read inside."""
    if len(st.members[root]) > 1 or st.copies[root]:
        return True
    return any(graph.producers.get(v) is not None and graph.ops[graph.producers[v]].name in GENERATORS
               for o in st.members[root] for v in graph.ops[o].operands)


def _hero_space(program, st: _State, space, root: int) -> int:
    """The loop a group runs: a reduction's input (its hero), else its largest result."""
    graph = program.graph
    for o in st.members[root]:
        if st.cls[o] == "reduce":
            return graph.values[graph.ops[o].operands[0]].elements
    return _group_space(st, space, root)


def _group_readers(program, st: _State, node: int) -> set[int]:
    """The nodes of the kernel graph that read a result of ``node``: a group (its root, >= 0) for every op it owns
    or recomputes that reads it; an op no group holds that is a kernel boundary all the same (a loop, a branch:
    ``-1 - op id``). Broadcasts and views are looked through."""
    graph = program.graph
    out: set[int] = set()
    if node >= 0:
        stack = [r for o in st.members[node] for r in graph.ops[o].results]
    else:
        stack = list(graph.ops[-1 - node].results)
    seen: set[int] = set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        for u in st.users.get(v, ()):
            if st.owned(u):
                out.add(st.find(u))
            elif u in st.copied_in:
                out.update(st.find(g) for g in st.copied_in[u])
            elif st.cls.get(u) in ("view", "generator"):
                stack.extend(graph.ops[u].results)
            else:
                out.add(-1 - u)
    out.discard(node)
    return out


def _siblings(program, st: _State, order: _Order, space, made: set[Edge], shared_reads: tuple[int, ...],
              flavour: str = "gpu") -> None:
    """Groups that read the same value (not a scalar) and do not depend on each other merge when their loops have
    the same shape (XLA's sibling multi-output fusion); not matmul groups, not readers of a matmul's result (XLA:GPU
    leaves those apart), and on a GPU only when one of the two already is a fusion (XLA:GPU merges siblings into a
    fusion, never two lone ops). XLA:TPU merges lone ops too (patterns ``siblings_lone_ops``, ``sib_three_lone``),
    but only groups whose results have one element type (``mixed_loop_and_reduction``: a bf16 loop and an f32
    sum stay apart; ``sib_loop_and_max_bf16``, ``sib_loop_and_reduce_f32`` merge)."""
    graph = program.graph
    for v in shared_reads:         # the values two kernel ops read (``_program_facts``): the only shared ones
        readers = st.users[v]
        p = producer_through_views(graph, v, st.cls)
        if p is not None and st.owned(p) and "matmul" in st.kinds[st.find(p)]:
            continue
        roots = sorted({st.find(u) for u in readers if st.owned(u) and not st.kinds[st.find(u)] & {"matmul", "opaque",
                                                                                                  "root"}})
        if len(roots) < 2:
            continue
        base = roots[0]
        for other in roots[1:]:
            a, b = st.find(base), st.find(other)
            if a == b:
                continue
            if graph.ops[st.members[a][0]].frames != graph.ops[st.members[b][0]].frames:
                continue
            if _hero_space(program, st, space, a) != _hero_space(program, st, space, b):
                continue
            if flavour == "tpu":
                if _root_dtype(graph, st, a) != _root_dtype(graph, st, b):
                    continue
            elif not (_is_fusion(graph, st, a) or _is_fusion(graph, st, b)):
                continue
            if order.merge(a, b, direct_edge_ok=False) is not None:
                made.add((min(st.members[st.find(a)]), -v - 1))
