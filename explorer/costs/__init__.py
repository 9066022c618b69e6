"""Stage 3, counting: per-op work (``Work``) by registered rules, and the counted ``Program``.

Every module in ``rules/`` is imported, so a new rule file registers itself. A rule never reads a
chip's speed: a program is counted once and priced on any number of targets."""
import importlib
import pkgutil

from . import rules as _rules_pkg
from .registry import find_rule, registered, rule, rule_key
from .work import ZERO, Gemm, Work

for _m in sorted(m.name for m in pkgutil.iter_modules(_rules_pkg.__path__)):
    importlib.import_module(f"{_rules_pkg.__name__}.{_m}")

from .program import Program  # noqa: E402  (after the rules: a program counts with all of them registered)

__all__ = ["Work", "Gemm", "ZERO", "rule", "find_rule", "registered", "rule_key", "Program"]
