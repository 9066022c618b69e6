"""Chrome traces: valid Trace Event JSON, one event per kernel, no overlap within a stream, args that explain."""
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

import explorer
import hw_targets
from explorer.costs import Work
from explorer.model_files import load_module, load_program
from explorer.report.trace import COLLECTIVES, COMPUTE, COPIES
from passes.fusion import Fuse
from passes.plan import ExtraKernel

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def gpt2_scan():
    """GPT-2 small config with ``nn.scan`` layers: its kernels in the loop bodies run n_layers times."""
    small = load_module(EXAMPLES / "gpt2_train.py").SMALL_CONFIG
    return load_program(str(EXAMPLES / "gpt2_train.py"), {**small, "scan_layers": True})


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


def kernel_events(trace):
    return [e for e in trace["traceEvents"] if e["ph"] == "X"]


def assert_no_overlap_within_streams(events):
    by_stream = {}
    for e in events:
        by_stream.setdefault(e["tid"], []).append(e)
    for evs in by_stream.values():
        evs.sort(key=lambda e: e["ts"])
        for a, b in zip(evs, evs[1:]):
            assert b["ts"] >= a["ts"] + a["dur"], (a["name"], b["name"])


def test_one_event_per_kernel_valid_json(gpt2_scan, h100, tmp_path):
    est = explorer.estimate(gpt2_scan, h100)
    path = tmp_path / "trace.json"
    est.to_chrome_trace(path)
    trace = json.loads(path.read_text())
    events = kernel_events(trace)
    assert len(events) == len(est.kernels)
    assert sorted((e["name"], e["args"]["seconds"]) for e in events) == sorted((k.name, k.seconds) for k in est.kernels)
    for e in events:
        assert {"ph", "ts", "dur", "pid", "tid", "name"} <= set(e) and e["dur"] >= 0
        assert {"layer", "phase", "bytes", "flops", "runs"} <= set(e["args"])
    assert_no_overlap_within_streams(events)
    # loop bodies: one event lasting every run, with the run count
    looped = [e for e in events if e["args"]["runs"] > 1]
    assert looped and all(e["args"]["runs"] == 2 for e in looped)     # SMALL_CONFIG has 2 layers
    for e in looped:
        assert e["dur"] == pytest.approx(e["args"]["seconds"] * 1e6, rel=1e-12)
        assert e["dur"] == pytest.approx(2 * 1e6 * (max(e["args"]["compute_s"], e["args"]["memory_s"], e["args"]["comm_s"])
                                                    + e["args"]["overhead_s"]), rel=1e-12)
    fused = next(e for e in events if e["args"].get("ops_total", 0) > 1)
    assert len(fused["args"]["ops"]) == min(fused["args"]["ops_total"], 64) and ":stablehlo." in fused["args"]["ops"][0]
    # nothing overlappable: the timeline is the estimate, kernel after kernel
    assert trace["otherData"]["timeline_seconds"] == pytest.approx(est.seconds, rel=1e-12)
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {"compute", "collectives", "copies"}


def first_dot(program) -> int:
    return next(o.id for o in program.graph.ops if o.name == "stablehlo.dot_general")


@dataclass(frozen=True)
class Inserted:
    """Test pass: an async all-reduce after the first matmul, a blocking all-gather at the end, a host-link copy."""

    name = "test_inserted"

    def run(self, program, plan, target):
        last, dot = len(program.graph.ops) - 1, first_dot(program)
        extras = (ExtraKernel("async_ar", Work(collective="all_reduce", collective_bytes=8e6, group_size=8),
                              after_op=dot, overlappable=True),
                  ExtraKernel("sync_ag", Work(collective="all_gather", collective_bytes=1e6, group_size=8), after_op=last),
                  ExtraKernel("offload", Work(bytes_read=4e6), after_op=dot, link="host", overlappable=True))
        return plan.with_(extra_kernels=extras)


def test_inserted_work_on_its_own_streams(gpt2_scan, h100):
    est = explorer.estimate(gpt2_scan, h100, pipeline=[Fuse(), Inserted()])
    trace = est.to_chrome_trace()
    events = kernel_events(trace)
    assert len(events) == len(est.kernels)
    assert_no_overlap_within_streams(events)
    by_name = {e["name"]: e for e in events}
    ar, ag, off = by_name["async_ar"], by_name["sync_ag"], by_name["offload"]
    assert (ar["tid"], ag["tid"], off["tid"]) == (COLLECTIVES, COLLECTIVES, COPIES)
    compute = sorted((e for e in events if e["tid"] == COMPUTE), key=lambda e: e["ts"])
    # the async all-reduce starts when the kernel holding the matmul it follows ends (the step's one launch, at
    # launch_overhead_s, came before), the host-link copy after the same op at the same time on the copy
    # engine, and compute carries on beside them
    dot = first_dot(gpt2_scan)
    anchor = next(e for e in compute if any(int(o.split(":")[0]) == dot for o in e["args"]["ops"]))
    assert anchor["args"]["end_s"] > h100.launch_overhead_s
    assert ar["args"]["start_s"] == anchor["args"]["end_s"] and off["args"]["start_s"] == ar["args"]["start_s"]
    assert any(e["ts"] < ar["ts"] + ar["dur"] and e["ts"] >= ar["ts"] for e in compute)
    # the blocking all-gather waits for all compute and ends the trace
    assert ag["ts"] >= max(e["ts"] + e["dur"] for e in compute)
    assert trace["otherData"]["timeline_seconds"] * 1e6 == pytest.approx(ag["ts"] + ag["dur"], rel=1e-12)


def test_transfers_on_the_copy_stream(gpt2_scan, h100):
    est = explorer.estimate(gpt2_scan, h100, pipeline="fuse{strategy=xla},place{policy=greedy}")
    events = kernel_events(est.to_chrome_trace())
    assert len(events) == len(est.kernels)
    copies = [e for e in events if e["tid"] == COPIES]
    assert copies
    assert [e["name"] for e in copies] == [k.name for k in est.kernels if k.phase == "transfer"]
    assert_no_overlap_within_streams(events)


def test_cli_writes_the_trace(tmp_path):
    from explorer.cli import main

    out = tmp_path / "t.json"
    assert main(["show", str(EXAMPLES / "mlp.py"), "--set", "batch=8", "--trace", str(out)]) == 0
    trace = json.loads(out.read_text())
    assert trace["otherData"]["target"] == "h100_sxm" and kernel_events(trace)
