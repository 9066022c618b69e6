"""Pass registry and pipelines.

A pass is a frozen dataclass with a ``name`` and typed options, and one entry point
``run(program, plan, target) -> Plan``; it may also list its alternative instances
(``alternatives()``), which the explorer, not the pass, iterates over.
A pipeline is a sequence of passes, also written as text for the command line:
``"fuse{strategy=xla},place{policy=greedy}"``.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
from typing import Any, Sequence

from explorer.graph.importer import GROUPING_OPS

from .plan import Plan
from .verify import verify_plan

_PASSES: dict[str, type] = {}
_INFRA = {"passes.plan", "passes.pipeline", "passes.verify"}
DEFAULT_PIPELINE = "fuse{strategy=xla}"
COMPILED_PIPELINE = "fuse{strategy=compiled}"
SHARDED_PREFIX = "shard"          # the sharding pass in its read-the-program mode (no mesh)


class PassError(RuntimeError):
    """A pass failed; the message names it and the passes that ran before it."""


class PipelineSyntaxError(ValueError):
    pass


def register(cls: type) -> type:
    """Class decorator: make a pass available by its ``name`` in pipeline text."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"pass {cls.__name__} has no name")
    _PASSES[name] = cls
    return cls


def _discover() -> None:
    """Import every module under ``passes/`` (subpackages too), so a new pass file registers itself."""
    pkg = sys.modules["passes"]
    for m in sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, "passes.")):
        if m not in _INFRA and not m.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(m)


def default_pipeline(program=None) -> str:
    """The pipeline ``explorer.estimate`` uses unless told otherwise: XLA-like fusion, or, for a program a
    compiler already fused (``explorer.lower(..., compiler="xla")``), the compiler's own kernels. A program that
    carries shardings over several devices (``NamedSharding`` in- / out-shardings, ``with_sharding_constraint``)
    is first partitioned as JAX asked, by the sharding pass reading the program (``shard``), so its estimate is
    per device with the collectives the partitioner would insert; its notes name the mesh."""
    passes = available()
    if "fuse" not in passes:
        return ""
    if program is not None and is_compiled(program):
        return COMPILED_PIPELINE
    if program is not None and "shard" in passes and _carries_shardings(passes["shard"], program):
        return f"{SHARDED_PREFIX},{DEFAULT_PIPELINE}"
    return DEFAULT_PIPELINE


def _carries_shardings(shard_pass: type, program) -> bool:
    """Asked of the registered sharding pass (``carries_shardings``), so this module imports no pass."""
    ask = getattr(shard_pass, "carries_shardings", None)
    return bool(ask(program)) if callable(ask) else False


def is_compiled(program) -> bool:
    """Whether the program is a compiler's optimized module (its kernels are fusion / async-start ops)."""
    hit = program.__dict__.get("_is_compiled")
    if hit is None:
        hit = program.__dict__["_is_compiled"] = any(op.name in GROUPING_OPS for op in program.graph.ops)
    return hit


def available() -> dict[str, type]:
    _discover()
    return dict(sorted(_PASSES.items()))


def _convert(value: str, field: dataclasses.Field, pass_name: str) -> Any:
    typ = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    try:
        if "bool" in typ:
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ValueError(value)
        if "int" in typ and "float" not in typ:
            return int(value)
        if "float" in typ:
            return float(value)
    except ValueError:
        raise PipelineSyntaxError(f"pass {pass_name!r}: option {field.name!r} expects {typ}, got {value!r}") from None
    return value


def parse(text: str) -> list[Any]:
    """``"fuse{strategy=xla},place{policy=greedy}"`` -> pass instances."""
    _discover()
    passes, i, text = [], 0, text.strip()
    while i < len(text):
        j = i
        while j < len(text) and text[j] not in "{,":
            j += 1
        name = text[i:j].strip()
        opts: dict[str, str] = {}
        if j < len(text) and text[j] == "{":
            k = text.find("}", j)
            if k < 0:
                raise PipelineSyntaxError(f"unclosed '{{' after pass {name!r} in {text!r}")
            for item in filter(None, (s.strip() for s in text[j + 1:k].split(","))):
                if "=" not in item:
                    raise PipelineSyntaxError(f"pass {name!r}: option {item!r} is not key=value")
                key, val = item.split("=", 1)
                opts[key.strip()] = val.strip()
            j = k + 1
        if name not in _PASSES:
            raise PipelineSyntaxError(f"unknown pass {name!r}; available: {', '.join(sorted(_PASSES))}")
        cls = _PASSES[name]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in opts:
            if key not in fields:
                raise PipelineSyntaxError(f"pass {name!r} has no option {key!r}; options: {', '.join(fields) or 'none'}")
        try:
            passes.append(cls(**{k: _convert(v, fields[k], name) for k, v in opts.items()}))
        except (TypeError, ValueError) as exc:
            raise PipelineSyntaxError(f"pass {name!r}: {exc}") from None
        while j < len(text) and text[j] in ", ":
            j += 1
        i = j
    return passes


def to_text(passes: Sequence[Any]) -> str:
    """The pipeline text of a sequence of pass instances (inverse of ``parse``)."""
    out = []
    for p in passes:
        fields = dataclasses.fields(p)
        # non-default options, and always the first (primary) option so "fuse{strategy=xla}" reads plainly
        # (an empty first option at its default, ``shard{mesh=}``, reads as the bare name)
        opts = ",".join(f"{f.name}={_fmt(getattr(p, f.name))}" for i, f in enumerate(fields)
                        if (i == 0 and getattr(p, f.name) != "") or getattr(p, f.name) != f.default)
        out.append(f"{p.name}{{{opts}}}" if opts else p.name)
    return ",".join(out)


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def resolve(pipeline: str | Sequence[Any] | None) -> list[Any]:
    if pipeline is None:
        return []
    if isinstance(pipeline, str):
        return parse(pipeline)
    return list(pipeline)


def run(passes: Sequence[Any], program, target, plan: Plan | None = None, verify: bool = False) -> Plan:
    """Apply passes in order. A failure names the pass and the ones that ran before it."""
    return _run(passes, program, target, plan, verify)


def run_certified(passes: Sequence[Any], program, target, certify: Sequence[Any]) -> tuple[Plan, list[Any]]:
    """``run``, each pass in ``certify`` through its ``run_certified`` (the certificate of its decisions, see
    ``passes.decisions``): the plan and the certificates, in pass order. A sweep checks them on its variants: where
    all hold, these passes decide as they did here (the others read no swept knob)."""
    certificates: list[Any] = []
    plan = _run(passes, program, target, None, False, certify, certificates)
    return plan, certificates


def _run(passes: Sequence[Any], program, target, plan: Plan | None, verify: bool, certify: Sequence[Any] = (),
         certificates: list[Any] | None = None) -> Plan:
    plan = plan or Plan()
    done: list[str] = []
    for p in passes:
        try:
            if any(p is c for c in certify):
                plan, cert = p.run_certified(program, plan, target)
                certificates.append(cert)
            else:
                plan = p.run(program, plan, target)
        except Exception as exc:
            before = ", ".join(done) or "none"
            raise PassError(f"pass {to_text([p])} failed (passes run before it: {before}): "
                            f"{type(exc).__name__}: {exc}") from exc
        done.append(to_text([p]))
        plan = plan.with_(history=plan.history + (done[-1],))
        if verify:
            verify_plan(program, plan, target, after=done[-1])
    return plan
