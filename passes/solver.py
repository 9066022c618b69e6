"""Integer programs for the passes that solve one (``place{policy=ilp}``, ``shard_ilp``): deterministic and quiet.

Both call scipy's HiGHS (``scipy.optimize.milp``). Two things matter to a user of their estimates:

- **Determinism.** A wall-clock limit makes the answer depend on how fast the machine happened to be:
  two processes could get different plans, hence different estimates. The limit here is a *work*
  limit instead, HiGHS's branch-and-bound node count (``mip_max_nodes``, scipy's ``node_limit``),
  so the same program, target and options give the same plan bit for bit, on any machine. A
  wall-clock limit can still be asked for (``time_limit_s > 0``); the result then says so.
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


def solve_milp(c, *, integrality, bounds, constraints, node_limit: int = DEFAULT_NODE_LIMIT,
               time_limit_s: float = 0.0, mip_rel_gap: float = 1e-9, presolve: bool = True) -> Solved:
    """``scipy.optimize.milp`` under a node limit (deterministic), optionally a wall-clock limit, printing nothing.
    ``mip_rel_gap``: stop once the best solution is proved within this fraction of optimal; ``presolve``: HiGHS's
    presolve (both deterministic)."""
    from scipy.optimize import milp

    if not isinstance(node_limit, int) or isinstance(node_limit, bool) or node_limit < 1:
        raise ValueError(f"node_limit must be a positive int, got {node_limit!r}")
    if not time_limit_s >= 0:
        raise ValueError(f"time_limit_s must be >= 0 (0: no wall-clock limit), got {time_limit_s!r}")
    options: dict[str, Any] = {"disp": False, "node_limit": node_limit, "mip_rel_gap": mip_rel_gap,
                               "presolve": bool(presolve)}
    if time_limit_s > 0:
        options["time_limit"] = float(time_limit_s)
    with quiet_stdout():
        res = milp(c=c, integrality=integrality, bounds=bounds, constraints=constraints, options=options)
    fun = float(res.fun) if res.fun is not None else float("nan")
    gap = float(res.mip_gap) if getattr(res, "mip_gap", None) is not None else float("nan")
    return Solved(x=res.x, objective=fun, optimal=res.status == 0, nodes=int(res.mip_node_count or 0), gap=gap,
                  message=str(res.message), node_limit=node_limit, time_limit_s=float(time_limit_s),
                  mip_rel_gap=float(mip_rel_gap))
