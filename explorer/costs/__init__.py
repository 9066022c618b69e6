"""Per-op work counting. Every module in ``rules/`` is imported, so a new rule file registers itself."""
import importlib
import pkgutil

from . import rules as _rules_pkg
from .registry import find_rule, registered, rule, rule_key
from .work import ZERO, Gemm, Work

for _m in sorted(m.name for m in pkgutil.iter_modules(_rules_pkg.__path__)):
    importlib.import_module(f"{_rules_pkg.__name__}.{_m}")

__all__ = ["Work", "Gemm", "ZERO", "rule", "find_rule", "registered", "rule_key"]
