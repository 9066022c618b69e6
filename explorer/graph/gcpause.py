"""``paused_gc()``: Python's cyclic garbage collector off while a pass over a whole program allocates.

Importing, counting and pricing a train step make millions of small objects (ops, tuples, dicts) that form no
reference cycles; with the collector on, every so many allocations it walks all live objects, so its cost grows
with the program (a fifth to a third of an estimate's time on a GPT-2 step). Results do not depend on it: the
collector only frees cycles, which are collected when it is back on. Nested uses leave it as the outermost found it.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    was = gc.isenabled()
    if was:
        gc.disable()
    try:
        yield
    finally:
        if was:
            # what the pass allocated goes straight to the oldest generation (freeze, then unfreeze: two list
            # splices), so the first young collection after the pause does not walk it all (tens of ms per
            # estimate on a GPT-2 step); its cycles, if any, are freed by the next full collection
            gc.freeze()
            gc.unfreeze()
            gc.enable()
