"""Integer programs for the passes that solve one (``place{policy=ilp}``, ``shard_ilp``): deterministic and quiet.

Both call HiGHS through its own bindings (``highspy``, pinned in ``pyproject.toml``; scipy's ``milp`` bundles
whichever HiGHS its release shipped, and lets no option but a few through). Three things matter to a user:

- **Determinism.** A wall-clock limit makes the answer depend on how fast the machine happened to be:
  two processes could get different plans, hence different estimates. The limit here is a *work*
  limit instead, HiGHS's branch-and-bound node count (``mip_max_nodes``), on one thread with a fixed
  seed, so the same program, target and options give the same plan bit for bit, on any machine. A
  wall-clock limit can still be asked for (``time_limit_s > 0``); the result then says so. Where two
  plans are equally good, another HiGHS release may pick the other: hence the pin.
- **Speed.** A caller that has a heuristic answer passes it as ``start``: the solver begins with an
  incumbent, prunes from the first node, and never returns anything worse.
- **Silence.** HiGHS prints from C (``printf``), past Python's ``sys.stdout``: a debug line such as
  ``HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();`` would corrupt
  ``explorer show ... --json``. The solve runs with file descriptor 1 pointed at ``/dev/null`` (C's
  buffers flushed before it is restored), so nothing it prints reaches standard output.

``Solved.note`` says, for the plan notes, whether the solver proved its answer optimal or stopped early.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

DEFAULT_NODE_LIMIT = 2000


@dataclass(frozen=True)
class Solved:
    x: Any                  # numpy array of the variables (None: no feasible point found)
    objective: float
    optimal: bool
    nodes: int
    gap: float
    message: str
    node_limit: int
    time_limit_s: float
    mip_rel_gap: float = 1e-9

    @property
    def note(self) -> str:
        """One line for the plan notes: optimal, or where and why the solver stopped."""
        if self.x is None:
            return f"no feasible solution found ({self.message})"
        if self.optimal:
            within = f" (within {self.mip_rel_gap:.2%})" if self.mip_rel_gap >= 1e-6 else ""
            return f"optimal{within} after {self.nodes} branch-and-bound nodes"
        why = (f"the wall-clock limit of {self.time_limit_s:g} s (this result may differ between runs)"
               if "time limit" in self.message.lower() else f"the work limit of {self.node_limit} nodes")
        gap = f", optimality gap {self.gap:.2%}" if self.gap is not None and self.gap == self.gap else ""
        return f"stopped early at {why}{gap}: the best solution found is used"


def _flush_c_stdio() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):   # no C runtime reachable this way (e.g. Windows): nothing buffered to lose
        pass


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Point file descriptor 1 at /dev/null for the duration (C-level prints included), then restore it."""
    try:
        sys.stdout.flush()
    except (AttributeError, ValueError, OSError):
        pass
    try:
        saved = os.dup(1)
    except OSError:            # no descriptor 1 at all: nothing can reach standard output anyway
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        _flush_c_stdio()       # what C buffered during the solve goes to /dev/null, not to the restored stdout
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _model(c, integrality, bounds, constraints):
    """The problem as a ``highspy.HighsLp`` (columns, bounds, a column-wise sparse matrix, integrality)."""
    import highspy
    from scipy.sparse import csc_matrix

    def vec(x, size: int) -> np.ndarray:          # a scalar or an array, as ``size`` floats
        return np.ascontiguousarray(np.broadcast_to(np.asarray(x, dtype=float), (size,)))

    c = np.asarray(c, dtype=float)
    n = len(c)
    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.col_cost_ = c
    lp.col_lower_ = vec(0.0 if bounds is None else bounds.lb, n)
    lp.col_upper_ = vec(np.inf if bounds is None else bounds.ub, n)
    if constraints is not None:
        a = csc_matrix(constraints.A, dtype=float)
        m = a.shape[0]
        lp.num_row_ = m
        lp.row_lower_, lp.row_upper_ = vec(constraints.lb, m), vec(constraints.ub, m)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = a.indptr.astype(np.int32)
        lp.a_matrix_.index_ = a.indices.astype(np.int32)
        lp.a_matrix_.value_ = a.data
    else:
        lp.num_row_ = 0
        lp.a_matrix_.start_ = np.zeros(n + 1, dtype=np.int32)
    kinds = np.zeros(n) if integrality is None else np.broadcast_to(np.asarray(integrality), (n,))
    lp.integrality_ = [highspy.HighsVarType.kInteger if k else highspy.HighsVarType.kContinuous for k in kinds]
    return lp


def solve_milp(c, *, integrality, bounds, constraints, node_limit: int = DEFAULT_NODE_LIMIT,
               time_limit_s: float = 0.0, mip_rel_gap: float = 1e-9, presolve: bool = True,
               start=None) -> Solved:
    """HiGHS (``highspy``, pinned: another HiGHS may pick another of several equally good answers) under a node limit
    (deterministic), optionally a wall-clock limit, on one thread, printing nothing. ``mip_rel_gap``: stop once the
    best solution is proved within this fraction of optimal; ``presolve``: HiGHS's presolve (both deterministic);
    ``start``: {variable: value} of a feasible point, e.g. a heuristic's integer choices (HiGHS completes the
    continuous variables): the search can only improve on it, and usually proves optimality sooner."""
    import highspy

    if not isinstance(node_limit, int) or isinstance(node_limit, bool) or node_limit < 1:
        raise ValueError(f"node_limit must be a positive int, got {node_limit!r}")
    if not time_limit_s >= 0:
        raise ValueError(f"time_limit_s must be >= 0 (0: no wall-clock limit), got {time_limit_s!r}")
    with quiet_stdout():                  # HiGHS prints its banner when made, before any option can be set
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        for key, value in (("threads", 1), ("random_seed", 0), ("mip_max_nodes", node_limit),
                           ("mip_rel_gap", float(mip_rel_gap)), ("presolve", "on" if presolve else "off")):
            h.setOptionValue(key, value)
        if time_limit_s > 0:
            h.setOptionValue("time_limit", float(time_limit_s))
        h.passModel(_model(c, integrality, bounds, constraints))
        if start:
            index = np.array(sorted(start), dtype=np.int32)
            h.setSolution(len(index), index, np.array([float(start[i]) for i in index]))
        h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    found = info.primal_solution_status == highspy.SolutionStatus.kSolutionStatusFeasible
    x = np.array(h.getSolution().col_value) if found else None
    message = h.modelStatusToString(status)
    return Solved(x=x, objective=float(info.objective_function_value) if found else float("nan"),
                  optimal=status == highspy.HighsModelStatus.kOptimal, nodes=int(info.mip_node_count),
                  gap=float(info.mip_gap), message=message, node_limit=node_limit,
                  time_limit_s=float(time_limit_s), mip_rel_gap=float(mip_rel_gap))
