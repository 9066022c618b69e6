"""Classes of ops as fusion sees them, and the graph walks every fusion strategy shares."""
from __future__ import annotations

ELEMENTWISE_PREFIX = ("stablehlo.", "chlo.")
MOVEMENT = frozenset({
    "stablehlo.transpose", "stablehlo.slice", "stablehlo.concatenate", "stablehlo.pad", "stablehlo.reverse",
    "stablehlo.dynamic_slice", "stablehlo.gather", "stablehlo.copy", "stablehlo.broadcast_in_dim",
    "stablehlo.broadcast", "stablehlo.iota", "stablehlo.select",
})
GENERATORS = frozenset({"stablehlo.broadcast_in_dim", "stablehlo.broadcast", "stablehlo.iota", "stablehlo.constant"})
REDUCE = frozenset({"stablehlo.reduce", "stablehlo.reduce_window"})
MATMUL = frozenset({"stablehlo.dot_general", "stablehlo.dot", "stablehlo.convolution"})
PARTIAL_READERS = frozenset({"stablehlo.dynamic_slice", "stablehlo.slice", "stablehlo.gather",
                              "stablehlo.dynamic_update_slice"})
IN_PLACE_ROOTS = frozenset({"stablehlo.dynamic_update_slice", "stablehlo.scatter"})

Edge = tuple[int, int]


def op_class(program, oid: int) -> str:
    """'generator', 'elementwise', 'movement', 'reduce', 'matmul', 'view', 'root' (fusible only as a consumer)
    or 'opaque' (never fused)."""
    op = program.graph.ops[oid]
    w = program.works[oid]
    if w is None:
        return "opaque"
    if op.regions:
        return "opaque"      # while / case / manual computation: a fusion barrier that reads real buffers
    if op.name in GENERATORS:
        return "generator"
    if not w.launches_kernel:
        return "view"
    if op.name in MATMUL and (w.matrix_flops or w.gemm is not None):
        return "matmul"            # (a dot that contracts nothing is a multiply: elementwise, below)
    if op.name in REDUCE:
        return "reduce"
    if op.name in MOVEMENT:
        return "movement"
    if op.name in IN_PLACE_ROOTS:
        return "root"
    if w.collective or op.regions or op.name.endswith("custom_call"):
        return "opaque"
    if (w.vector_flops or w.transcendentals) and not w.matrix_flops and op.name.startswith(ELEMENTWISE_PREFIX) \
            and op.name not in ("stablehlo.sort", "chlo.top_k", "stablehlo.fft", "stablehlo.cholesky", "stablehlo.triangular_solve",
                                "stablehlo.select_and_scatter", "stablehlo.map", "stablehlo.batch_norm_training",
                                "stablehlo.batch_norm_grad", "stablehlo.batch_norm_inference"):
        return "elementwise"
    return "opaque"


def producer_through_views(graph, vid: int, cls) -> int | None:
    """The op that really produces a value, looking through reshapes/bitcasts (views, not kernels)."""
    for _ in range(64):
        p = graph.producers.get(vid)
        if p is None or cls.get(p) != "view" or len(graph.ops[p].operands) != 1:
            return p
        vid = graph.ops[p].operands[0]
    return None


def kernel_readers(graph, users, vid: int, is_kernel, is_transparent) -> set[int]:
    """The kernels that read a value, looking through readers that are no kernel of their own (views,
    broadcasts duplicated into their readers); -1 for a reader that is neither (a loop, a program output)."""
    out, stack, seen = set(), [vid], set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v in graph.outputs or v in graph.escaping:
            out.add(-1)
        for u in users.get(v, ()):
            if is_kernel(u):
                out.add(u)
            elif is_transparent(u):
                stack.extend(graph.ops[u].results)
            else:
                out.add(-1)
    return out


def real_users(graph, users, vid: int) -> list[int]:
    """Readers of a value, looking through views (reshape/bitcast), which are not kernels."""
    out, stack, seen = [], [vid], set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        for u in users.get(v, ()):
            op = graph.ops[u]
            if op.name in ("stablehlo.reshape", "stablehlo.bitcast_convert"):
                stack.extend(op.results)
            else:
                out.append(u)
    return out


def materialised(program, oid: int, cls, users) -> bool:
    """A generator is materialised only when something that cannot fuse it reads it (or it is an output)."""
    graph = program.graph
    op = graph.ops[oid]
    if cls[oid] == "view":
        return False
    for r in op.results:
        if r in graph.outputs or r in graph.escaping:
            return True
        for u in real_users(graph, users, r):
            if u not in cls or cls[u] in ("opaque", "root", "matmul"):
                if op.name == "stablehlo.constant":
                    return False   # constants are baked into the executable
                return True
    return False


def space_of(program, oid: int) -> int:
    """Elements of an op's largest result: the loop a kernel made of it runs over."""
    graph = program.graph
    return max((graph.values[r].elements for r in graph.ops[oid].results), default=0)
