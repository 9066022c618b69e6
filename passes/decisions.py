"""Certificates: when a pass's decisions, made on one target, are the decisions it would make on another.

A pass that ranks choices by their time on the target (``shard`` ranks candidate layouts by their collectives'
time and their local work) decides through comparisons of costs. Run once with *traced* costs, it records every
comparison it made: each cost is a ``Cost`` (a float that remembers how it was computed, from which target
figures, in which order of additions), and each ``<``, ``<=``, ``==`` ... between costs is written down with its
outcome. On another target the recorded costs are recomputed (the same operations, in the same order, on that
target's figures) and the comparisons checked: when every one comes out the same, the pass, deterministic in
everything else, makes the same decisions there, exactly. A sweep checks a certificate on thousands of
variants at once (``holds`` on a sweep's ``ArrayTarget``, one entry per variant) instead of re-running the pass
for each.

A computation the tracer cannot follow (an operation it does not record) marks the certificate ``broken``: it
then holds nowhere but on its own target, and the sweep runs the pass again where it must.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import numpy as np

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
_ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


class Trace:
    """What one traced run computed from the target (leaves, then the arithmetic on them) and compared."""

    def __init__(self, leaf_time: Callable[[Any, tuple], Any]):
        self._leaf_time = leaf_time             # (target, leaf spec) -> seconds (scalar, or array of variants)
        self.nodes: list[tuple] = []            # ("leaf", spec) | ("const", value) | (op, a, b) | ("neg", a)
        self._index: dict[tuple, int] = {}
        self.constant: list[bool] = []          # node depends on no target figure
        self.checks: dict[tuple[str, int, int], bool] = {}
        self.broken = ""                        # why the certificate cannot be trusted elsewhere ("" when it can)

    def _node(self, key: tuple, constant: bool) -> int:
        i = self._index.get(key)
        if i is None:
            i = self._index[key] = len(self.nodes)
            self.nodes.append(key)
            self.constant.append(constant)
        return i

    def leaf(self, spec: tuple, value: float) -> "Cost":
        """A figure read from the target (``spec`` says how ``leaf_time`` recomputes it)."""
        return Cost(value, self._node(("leaf", spec), False), self)

    def ref(self, x: Any) -> int:
        if isinstance(x, Cost) and x.trace is self:
            return x.node
        if isinstance(x, Cost):
            self.broken = "costs of two traces mixed"
        return self._node(("const", float(x)), True)

    def combine(self, op: str, a: Any, b: Any, value: float) -> "Cost":
        ia, ib = self.ref(a), self.ref(b)
        return Cost(value, self._node((op, ia, ib), self.constant[ia] and self.constant[ib]), self)

    def compare(self, op: str, a: Any, b: Any, outcome: bool) -> bool:
        ia, ib = self.ref(a), self.ref(b)
        if not (self.constant[ia] and self.constant[ib]):
            key = (op, ia, ib)
            if self.checks.setdefault(key, outcome) != outcome:    # cannot happen for a deterministic value
                self.broken = f"comparison {key} gave two outcomes"
        return outcome

    def certificate(self) -> "Certificate":
        return Certificate(self)


class Cost(float):
    """A float computed from target figures, remembering how (see the module docstring)."""

    __slots__ = ("node", "trace")

    def __new__(cls, value: float, node: int, trace: Trace):
        c = super().__new__(cls, value)
        c.node, c.trace = node, trace
        return c

    # arithmetic that is recorded: the result's value is exactly the float operation's
    def __add__(self, o):
        return self.trace.combine("+", self, o, float(self) + float(o)) if _number(o) else NotImplemented

    def __radd__(self, o):
        return self.trace.combine("+", o, self, float(o) + float(self)) if _number(o) else NotImplemented

    def __sub__(self, o):
        return self.trace.combine("-", self, o, float(self) - float(o)) if _number(o) else NotImplemented

    def __rsub__(self, o):
        return self.trace.combine("-", o, self, float(o) - float(self)) if _number(o) else NotImplemented

    def __mul__(self, o):
        return self.trace.combine("*", self, o, float(self) * float(o)) if _number(o) else NotImplemented

    def __rmul__(self, o):
        return self.trace.combine("*", o, self, float(o) * float(self)) if _number(o) else NotImplemented

    def __truediv__(self, o):
        return self.trace.combine("/", self, o, float(self) / float(o)) if _number(o) else NotImplemented

    def __rtruediv__(self, o):
        return self.trace.combine("/", o, self, float(o) / float(self)) if _number(o) else NotImplemented

    def __neg__(self):
        t = self.trace
        return Cost(-float(self), t._node(("neg", self.node), t.constant[self.node]), t)

    def __pos__(self):
        return self

    # comparisons: recorded with their outcome
    def __lt__(self, o):
        return self.trace.compare("<", self, o, float(self) < float(o)) if _number(o) else NotImplemented

    def __le__(self, o):
        return self.trace.compare("<=", self, o, float(self) <= float(o)) if _number(o) else NotImplemented

    def __gt__(self, o):
        return self.trace.compare(">", self, o, float(self) > float(o)) if _number(o) else NotImplemented

    def __ge__(self, o):
        return self.trace.compare(">=", self, o, float(self) >= float(o)) if _number(o) else NotImplemented

    def __eq__(self, o):
        return self.trace.compare("==", self, o, float(self) == float(o)) if _number(o) else NotImplemented

    def __ne__(self, o):
        return self.trace.compare("!=", self, o, float(self) != float(o)) if _number(o) else NotImplemented

    def __bool__(self):
        return self.trace.compare("!=", self, 0.0, float(self) != 0.0)

    __hash__ = float.__hash__

    # anything else leaves the trace: the certificate is no longer trusted
    def _untraced(name: str):        # noqa: N805 (a method factory)
        def method(self, *args):
            self.trace.broken = f"untraced operation {name} on a cost"
            return getattr(float, name)(float(self), *(float(a) if isinstance(a, Cost) else a for a in args))
        method.__name__ = name
        return method

    for _name in ("__pow__", "__rpow__", "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__divmod__",
                  "__rdivmod__", "__abs__", "__round__", "__trunc__", "__floor__", "__ceil__", "__int__"):
        locals()[_name] = _untraced(_name)
    del _name, _untraced


def _number(o: Any) -> bool:
    return isinstance(o, (int, float)) and not isinstance(o, bool) or isinstance(o, Cost)


class Certificate:
    """The comparisons of one traced run, checkable on other targets."""

    def __init__(self, trace: Trace):
        self.trace = trace
        needed: set[int] = set()
        stack = [i for _, a, b in trace.checks for i in (a, b)]
        while stack:
            i = stack.pop()
            if i in needed:
                continue
            needed.add(i)
            node = trace.nodes[i]
            if node[0] in _ARITH:
                stack.extend(node[1:])
            elif node[0] == "neg":
                stack.append(node[1])
        self._order = sorted(needed)      # children were made before their parents
        self.checks = tuple((op, a, b, outcome) for (op, a, b), outcome in trace.checks.items())

    @property
    def broken(self) -> str:
        return self.trace.broken

    def __len__(self) -> int:
        return len(self.checks)

    def holds(self, target: Any, n: int) -> np.ndarray:
        """Per variant of ``target`` (a ``Target``, or a sweep's ``ArrayTarget`` of ``n`` variants): whether every
        recorded comparison comes out as it did, i.e. the pass decides there as it did where it was traced."""
        if self.trace.broken:
            return np.zeros(n, dtype=bool)
        nodes, leaf_time = self.trace.nodes, self.trace._leaf_time
        value: dict[int, Any] = {}
        with np.errstate(all="ignore"):
            for i in self._order:
                node = nodes[i]
                kind = node[0]
                if kind == "leaf":
                    value[i] = leaf_time(target, node[1])
                elif kind == "const":
                    value[i] = node[1]
                elif kind == "neg":
                    value[i] = -value[node[1]]
                else:
                    value[i] = _ARITH[kind](value[node[1]], value[node[2]])
            ok = np.ones(n, dtype=bool)
            for op, a, b, outcome in self.checks:
                got = _COMPARE[op](value[a], value[b])
                if isinstance(got, np.ndarray):
                    ok &= got == outcome
                elif bool(got) != outcome:
                    return np.zeros(n, dtype=bool)
        return ok
