"""How `mmcardio bench` measures: wall time (the median of repeats, taking turns between the
calls compared so a ratio sees the same machine load), FLOPs (`mmcardio.flops.count_flops`), the
peak memory of each measurement, and the dense matmul rate that utilization is relative to.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmcardio.flops import count_flops

MIB = 2**20
GIGA = 1e9
#: The training dtypes measured, and the torch dtype of each.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

def autocast(dtype: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the CPU (as accelerate's mixed_precision="bf16" runs), or nothing."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=DTYPES[dtype])


# ------------------------------------------------------------------------------ memory

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (in kB there) in MiB."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux 4.0 and later)."""
    _CLEAR_REFS.write_text("5")


PEAK_RESETS = os.access(_CLEAR_REFS, os.W_OK) and _STATUS.is_file()
#: How the peak memory of each measurement is taken (recorded in the document).
MEMORY_METHOD = (
    "peak resident memory (VmHWM) during the measurement, the kernel's mark reset before it "
    "(/proc/self/clear_refs), minus the resident memory before it after returning freed heap "
    "memory (malloc_trim): a measurement's own memory in this process, without a subprocess "
    "per measurement (each would re-import torch and rebuild the model); data-loader workers "
    "are other processes and not counted"
    if PEAK_RESETS else
    "the process's peak resident memory so far (ru_maxrss; this system cannot reset the "
    "kernel's peak mark), minus the resident memory before the measurement: 0 unless the "
    "measurement raised the process's peak"
)
_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None


def resident_mib() -> float:
    """The process's resident memory now (ru_maxrss stands in where /proc is missing)."""
    return _status_mib("VmRSS") if _STATUS.is_file() else peak_rss_mib()


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (MIB if sys.platform == "darwin" else 1024)


@contextlib.contextmanager
def peak_memory() -> Iterator[dict[str, float]]:
    """Fills the yielded dict with `memory_mib` (peak resident memory while the block ran,
    above what was resident before it) and `peak_rss_mib` (that peak) when the block ends."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)  # freed heap pages would otherwise count as resident before
    before = resident_mib()
    figures: dict[str, float] = {}
    if PEAK_RESETS:
        _reset_peak()
    yield figures
    peak = _status_mib("VmHWM") if PEAK_RESETS else peak_rss_mib()
    figures.update(memory_mib=max(peak - before, 0.0), peak_rss_mib=peak)


# ------------------------------------------------------------------------------ timing

def median_seconds(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each run, the runs called in turn (a, b, a, b, ...) so each
    sees the same machine load and their ratios hold on a busy machine."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


@dataclass
class Workload:
    """A call to measure: `run` processes `samples` samples (a training step or an inference
    pass) in `dtype`. `count` is the call whose FLOPs are counted when it is not `run` itself:
    an inference pass is counted as a forward with gradients on, because the fused inference
    kernel of nn.TransformerEncoderLayer (no gradients, eval mode) is invisible to
    FlopCounterMode; the matmuls are the same."""

    run: Callable[[], Any]
    samples: int
    dtype: str = "fp32"
    count: Callable[[], Any] | None = None


def measure(workloads: dict[str, Workload], probes: dict[str, Matmul], repeats: int, warmup: int,
            on_start: Callable[[str], None] = lambda name: None) -> dict[str, dict]:
    """Each workload's figures (see `figures`), the workloads and a matmul probe of each dtype
    timed in turn (`median_seconds`), so each MFU divides by the peak measured beside it. The
    first call of each workload is untimed and counts towards `warmup`: FLOPs are counted and
    the peak memory is taken on it."""
    firsts = {}
    for name, work in workloads.items():
        on_start(name)
        firsts[name] = first_call(work)
        for _ in range(warmup - 1):
            work.run()
    dtypes = sorted({work.dtype for work in workloads.values()})
    seconds = median_seconds({**{name: work.run for name, work in workloads.items()},
                              **{f"peak {dtype}": probes[dtype] for dtype in dtypes}}, repeats)
    peaks = {dtype: probes[dtype].flops / seconds[f"peak {dtype}"] / GIGA for dtype in dtypes}
    return {name: figures(firsts[name][0], work, seconds[name], peaks[work.dtype], firsts[name][1])
            for name, work in workloads.items()}


def first_call(work: Workload) -> tuple[float, dict[str, float]]:
    """(FLOPs of one call, its peak memory) from the workload's first call(s)."""
    if work.count is not None:
        flops = count_flops(work.count)
        with peak_memory() as memory:
            work.run()
        return flops, memory
    with peak_memory() as memory:
        flops = count_flops(work.run)
    return flops, memory


def figures(flops: float, work: Workload, seconds: float, peak: float, memory: dict[str, float]
            ) -> dict[str, Any]:
    """ms per call, samples/s, GFLOP per sample, achieved GFLOP/s, the matmul peak of the
    dtype measured beside it, MFU (achieved over that peak), memory."""
    achieved = flops / seconds / GIGA
    return {"dtype": work.dtype, "samples": work.samples, "ms": 1000 * seconds,
            "samples_per_s": work.samples / seconds, "gflop_per_sample": flops / work.samples / GIGA,
            "gflop_per_s": achieved, "peak_gflop_per_s": peak, "mfu": achieved / peak, **memory}


# ------------------------------------------------------------------------------ the limit

class Matmul:
    """A square torch.matmul of `size` in `dtype`: the dense compute the machine does best."""

    def __init__(self, size: int, dtype: str):
        generator = torch.Generator().manual_seed(0)
        self.a, self.b = (torch.randn(size, size, generator=generator).to(DTYPES[dtype]) for _ in range(2))
        self.flops = 2 * size**3

    def __call__(self) -> torch.Tensor:
        return torch.matmul(self.a, self.b)


def matmul_peak(sizes: tuple[int, ...], repeats: int, warmup: int) -> dict[str, dict]:
    """The dense matmul rate (GFLOP/s, the median of `repeats`) in each dtype at each size, and
    the best size's as the dtype's peak (on the threads set). Measurements then time a probe
    of that size beside each workload (`measure`)."""
    rates: dict[str, dict] = {}
    for dtype in DTYPES:
        by_size = {}
        for n in sizes:
            matmul = Matmul(n, dtype)
            for _ in range(warmup):
                matmul()
            by_size[str(n)] = matmul.flops / median_seconds({"matmul": matmul}, repeats)["matmul"] / GIGA
        best = max(by_size, key=by_size.get)
        rates[dtype] = {"gflop_per_s": by_size[best], "size": int(best), "by_size": by_size}
    return rates


def peak_probes(peak: dict[str, dict]) -> dict[str, Matmul]:
    """A matmul of each dtype at the size `matmul_peak` found fastest, warmed up."""
    probes = {dtype: Matmul(peak[dtype]["size"], dtype) for dtype in DTYPES}
    for probe in probes.values():
        probe()
    return probes
