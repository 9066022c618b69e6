"""Memory / time trade-off of rematerialisation and offload for a GPT train step, on two chips.

The program is ``gpt2_train.py``'s training step at GPT-2 medium scale (24 layers, d_model 1024,
16 heads, batch 8 x 1024 tokens, bf16 compute, f32 AdamW state). Without recomputation its
activations need about 45 GB: it fits an 80 GB H100 as it is, and a hypothetical H100 with 24 GB
of HBM only with recomputation or offload. ``explorer.search_memory`` prices every remat policy x
offload choice on each chip and ranks them by step time among those that fit.

    python examples/remat_tradeoff.py tradeoff.png      # tables on stdout, the plot in tradeoff.png

The plot shows, per chip, each alternative's peak memory per chip against its step time, with
the chip's capacity as a line: what lies below it fits, and the leftmost point below it wins.

Conventions as in examples/README.md: ``Config`` (its defaults are the sizes above),
``program(**overrides)``, ``SMALL_CONFIG`` / ``small_program()``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _gpt2():
    """examples/gpt2_train.py, loaded by path (examples/ is not a package)."""
    name = "_example_gpt2_train"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _HERE / "gpt2_train.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@dataclasses.dataclass(frozen=True)
class Config(_gpt2().Config):
    """gpt2_train's Config at GPT-2 medium scale."""

    n_layers: int = 24
    d_model: int = 1024
    n_heads: int = 16
    d_ff: int = 4096
    batch: int = 8
    seq: int = 1024


SMALL_CONFIG = dict(vocab_size=64, n_ctx=16, d_model=32, n_heads=4, n_layers=2, d_ff=128, batch=8, seq=16)
CHIPS_GB = (80, 24)     # main-memory capacities compared


def make_config(**overrides) -> Config:
    valid = {f.name for f in dataclasses.fields(Config)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise TypeError(f"unknown Config override(s) {bad} for {__name__}; valid: {sorted(valid)}")
    return dataclasses.replace(Config(), **overrides)


def program(**overrides):
    """(train_step, (params, opt_state, batch)) with ShapeDtypeStruct args, at this file's sizes."""
    return _gpt2().program(**dataclasses.asdict(make_config(**overrides)))


def small_program(**overrides):
    return program(**{**SMALL_CONFIG, **overrides})


def chips(base: str = "h100_sxm", capacities_gb=CHIPS_GB):
    """The base preset with its main memory set to each capacity: [(label, target)]."""
    import hw_targets

    t = hw_targets.load(base)
    knob = f"memory.{t.main_memory.name}.capacity_bytes"
    return [(f"{base} with {gb} GB", t.replace(**{knob: gb * 1e9})) for gb in capacities_gb]


def tradeoff(prog, targets):
    """[(label, explorer.MemorySearch)] for each (label, target)."""
    import explorer

    return [(label, explorer.search_memory(prog, t)) for label, t in targets]


def plot(results, path: str) -> None:
    """Peak memory per chip against step time, one panel per chip, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5), squeeze=False)
    for ax, (label, res) in zip(axes[0], results):
        points: dict[tuple[float, float, bool], list[str]] = {}   # alternatives priced alike share a point
        for a in res.alternatives:
            name = a.pipeline.split("remat{policy=")[1].split("}")[0]
            if "place{" in a.pipeline:
                name += " + " + a.pipeline.split("place{")[1].rstrip("}")
            points.setdefault((a.seconds * 1e3, a.peak_bytes / 1e9, a.fits), []).append(name)
        for (ms, gb, fits), labels in points.items():
            ax.scatter(ms, gb, color="tab:green" if fits else "tab:red")
            ax.annotate(" = ".join(labels), (ms, gb), fontsize=7, xytext=(4, 2), textcoords="offset points")
        ax.axhline(res.budget_bytes / 1e9, color="gray", linestyle="--", linewidth=1, label="capacity")
        ax.scatter([], [], color="tab:green", label="fits")
        ax.scatter([], [], color="tab:red", label="does not fit")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("step time (ms, log)")
        ax.set_ylabel("peak memory per chip (GB)")
        ax.set_title(f"{label}\n{res.message}", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.path.insert(0, str(_HERE.parent))
    import explorer

    out = sys.argv[1] if len(sys.argv) > 1 else "remat_tradeoff.png"
    fn, args = program()
    prog = explorer.lower(fn, *args)
    results = tradeoff(prog, chips())
    for label, res in results:
        print(f"== {label}")
        print(res.table())
        print()
    plot(results, out)
    print(f"plot: {out}")
