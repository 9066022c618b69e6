"""How JAX starts inside the explorer on a machine without accelerators.

The compile-only plugins that let XLA:GPU and XLA:TPU compile here (``[xla-gpu]``, ``[xla-tpu]`` extras) look for
drivers and TPU metadata servers when JAX starts, and print warnings (from C++, on stderr) when there are none.
On a machine with no accelerator device nodes, the explorer sets the defaults that tell them not to look (only
where the user set nothing) and hides those start-up lines while it imports JAX. Nothing changes on a machine
with a GPU or TPU, or when JAX was imported first.
"""
from __future__ import annotations

import contextlib
import glob
import os
import sys
import tempfile
from typing import Iterator

# device nodes of NVIDIA, AMD and TPU accelerators
_ACCELERATOR_NODES = ("/dev/nvidia[0-9]*", "/dev/nvidiactl", "/dev/kfd", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")
_DEFAULTS = {"JAX_PLATFORMS": "cpu", "JAX_SKIP_CUDA_CONSTRAINTS_CHECK": "1", "TPU_SKIP_MDS_QUERY": "1",
             "TPU_WORKER_HOSTNAMES": "localhost"}
# start-up lines of the plugins that say only "no accelerator here"
PLUGIN_NOISE = ("cudart_stub", "absl::InitializeLog", "InitGoogle", "TPU_ACCELERATOR_TYPE", "TPU worker",
                "TPU_WORKER_HOSTNAMES", "libtpu_init_utils", "Source Location Trace", "common_lib.cc",
                "Failed to find host bounds", "=== ")


def has_accelerator() -> bool:
    return any(glob.glob(pattern) for pattern in _ACCELERATOR_NODES)


def filtered(text: str) -> str:
    """``text`` without the plugins' start-up noise."""
    return "\n".join(line for line in text.splitlines() if line.strip() and not any(n in line for n in PLUGIN_NOISE))


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Run the block with file descriptor 2 captured; afterwards pass on what it printed, less the plugins' noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            rest = filtered(tmp.read().decode(errors="replace"))
            if rest:
                print(rest, file=sys.stderr)


def backends_started() -> bool:
    from jax._src import xla_bridge   # third-party internals: whether JAX has initialised its backends yet

    return bool(getattr(xla_bridge, "_backends", None))


@contextlib.contextmanager
def quiet_backend_start() -> Iterator[None]:
    """The block may be the first to start JAX's backends (the plugins load then): filter their start-up lines."""
    if backends_started():
        yield
        return
    with filtered_stderr():
        yield


def import_jax_quietly() -> None:
    if "jax" in sys.modules:
        return
    if not has_accelerator():
        for key, value in _DEFAULTS.items():
            os.environ.setdefault(key, value)
    with filtered_stderr():
        import jax  # noqa: F401  (third-party; imported here first so its start-up is filtered)


import_jax_quietly()
