"""Where the shared reference data lives, and reading it row by row without ever stopping a run.

The reference data sits beside the repository: ``<repo>/../shared/reference/`` (see
``../shared/README.md``). Every validator takes ``--cases FILE`` for another CSV (and honours the
``VALIDATION_CASES`` environment variable). A row a validator cannot read is skipped and listed with
the reason (``Skipped``), never a traceback.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = ROOT.parent / "shared" / "reference"
DEFAULT_CASES = REFERENCE_DIR / "validation_cases.csv"

T = TypeVar("T")


def default_cases() -> Path:
    """``$VALIDATION_CASES`` if set, else ``../shared/reference/validation_cases.csv`` next to the repository."""
    env = os.environ.get("VALIDATION_CASES")
    return Path(env) if env else DEFAULT_CASES


def add_cases_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--cases", type=Path, default=None, metavar="FILE",
                    help=f"the validation CSV (default: $VALIDATION_CASES or {DEFAULT_CASES})")


def read_rows(path: Path | None, categories: Iterable[str] | None = None) -> list[dict[str, str]]:
    """The CSV's rows (optionally only those of ``categories``); a clear error when the file is missing."""
    path = Path(path) if path is not None else default_cases()
    if not path.is_file():
        raise SystemExit(f"validation cases: {path}: no such file (pass --cases FILE or set VALIDATION_CASES)")
    with path.open(newline="") as f:
        rows = [{k: (v or "") for k, v in r.items() if k is not None} for r in csv.DictReader(f)]
    cats = set(categories) if categories is not None else None
    return [r for r in rows if cats is None or r.get("category", "") in cats]


@dataclass(frozen=True)
class Skipped:
    case: str
    category: str
    reason: str


def parse_each(rows: Iterable[dict[str, str]], parse: Callable[[dict[str, str]], T],
               skipped: list[Skipped]) -> Iterator[T]:
    """``parse(row)`` for every row; a row that raises is appended to ``skipped`` with the reason."""
    for r in rows:
        try:
            yield parse(r)
        except Exception as exc:   # a row we cannot read is reported, never fatal
            skipped.append(Skipped(r.get("case_id", "?"), r.get("category", "?"),
                                   f"cannot read the row: {type(exc).__name__}: {exc}"))


def integer(row: dict[str, str], key: str, default: int | None = None) -> int:
    """An integer column ("64", "64.0", "1,024"); ``default`` when empty; ValueError naming the column otherwise."""
    text = row.get(key, "").strip().replace(",", "").replace("_", "")
    if not text:
        if default is None:
            raise ValueError(f"column {key!r} is empty")
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"column {key!r} is not a number: {row.get(key)!r}") from None
    if value != int(value):
        raise ValueError(f"column {key!r} is not an integer: {row.get(key)!r}")
    return int(value)


# dims a shape text may name, with the spellings sources use
_DIM_NAMES = {
    "B": ("B", "batch", "bs", "batch_size"),
    "H": ("H", "heads", "nheads", "n_heads", "num_heads"),
    "S": ("S", "seq", "seqlen", "seq_len", "sequence", "N"),
    "D": ("D", "head_dim", "headdim", "d_head", "dhead"),
}
_COLUMN_OF = {"H": "heads", "S": "seq_len", "D": "head_dim", "B": "per_device_batch"}


def attention_dims(row: dict[str, str]) -> tuple[int, int, int, int]:
    """(batch, heads, seq, head_dim) of an attention row: from its shape text in any of the usual spellings
    (``B=2,H=16,S=8192,D=128``, ``batch=2, seq=8192, head_dim=64``), else from the row's columns."""
    text = row.get("op_shape_or_message", "").split("(")[0]
    found: dict[str, int] = {}
    for key, spellings in _DIM_NAMES.items():
        for name in spellings:
            m = re.search(rf"(?<![A-Za-z_]){re.escape(name)}\s*[=:]\s*(\d+)", text,
                          flags=0 if len(name) == 1 else re.IGNORECASE)
            if m:
                found[key] = int(m[1])
                break
        if key not in found and row.get(_COLUMN_OF[key], "").strip():
            found[key] = integer(row, _COLUMN_OF[key])
    missing = [k for k in "BHSD" if k not in found]
    if missing:
        raise ValueError(f"attention shape {row.get('op_shape_or_message', '')!r}: no "
                         + ", ".join({'B': 'batch', 'H': 'heads', 'S': 'sequence', 'D': 'head dim'}[k] for k in missing))
    return found["B"], found["H"], found["S"], found["D"]
