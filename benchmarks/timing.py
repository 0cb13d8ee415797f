"""Timing helpers shared by the benchmarks: medians over repeats after warm-up (contenders
taking turns), device events on GPUs, the copy bandwidth of the same run (the floor every
kernel is held to), and resident-set readings for CPU memory peaks."""

from __future__ import annotations

import statistics
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn, device: torch.device) -> float:
    """Wall time of one fn() call: device events on CUDA, perf_counter on the CPU."""
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_medians(fns: dict, device: torch.device, *, warmup: int = 3,
                        repeats: int = 15) -> dict:
    """Median seconds of each fns[key]() over `repeats` rounds in which every function runs
    once, in turn. Taking turns puts a slow spell of the machine (shared CPU VMs drift by tens
    of percent within a minute) on every contender alike, so their ratios stay meaningful."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            times[key].append(_seconds(fn, device))
    return {key: statistics.median(ts) for key, ts in times.items()}


def median_seconds(fn, device: torch.device, *, warmup: int = 3, repeats: int = 15) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs."""
    return interleaved_medians({0: fn}, device, warmup=warmup, repeats=repeats)[0]


def copy_bandwidth(device: torch.device, n_bytes: int = 256 << 20) -> float:
    """Bytes per second (read plus written) of the faster of two streams over a large buffer:
    a copy into another buffer, and an in-place update. On CPUs the copy pays
    read-for-ownership on its destination (measured here: 30 GB/s vs 80 GB/s in place), and
    the fused kernels work in place, so the in-place stream is the honest floor there."""
    src = torch.rand(n_bytes // 4, device=device)
    dst = torch.zeros_like(src)
    copy = median_seconds(lambda: dst.copy_(src), device, repeats=20)
    in_place = median_seconds(lambda: src.add_(1.0), device, repeats=20)
    return 2 * n_bytes / min(copy, in_place)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def resident_mb() -> float:
    """This process's resident set now (Linux)."""
    return _status_mb("VmRSS")


def peak_resident_mb() -> float:
    """This process's peak resident set (Linux VmHWM). Not ru_maxrss: that one survives
    execve, so a child spawned by a large process (pytest) starts at its parent's peak."""
    return _status_mb("VmHWM")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def last_level_cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    try:  # Linux sysfs, e.g. "32768K"
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip()
        return int(text.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(text[-1], 0)
    except (OSError, ValueError):
        return 64 << 20


class Rotation:
    """Cycles through enough copies of an input set that one pass exceeds the cache,
    so repeated calls measure memory, not cache (METHOD.md: input rotation)."""

    def __init__(self, make_set, set_bytes: int, device: torch.device):
        cache = last_level_cache_bytes(device)
        copies = max(1, -(-2 * cache // max(set_bytes, 1)))
        self.sets = [make_set() for _ in range(copies)]
        self.index = 0

    def next(self):
        item = self.sets[self.index]
        self.index = (self.index + 1) % len(self.sets)
        return item
