"""Outer steps per minute of `farzi-fast distill` with its meta-batch split over N processes
(torchrun, gloo on the CPU) against one process, same configuration, and the scaling a
multi-GPU node should see, computed from the measured time of one inner loop and the bytes
each outer step all-reduces (the summary's meta-gradient: 4 (μξd + dV) bytes factorised,
4 μξV for direct logits).

    python -m benchmarks.bench_distributed --data DIR [--meta-batch 2] [--ranks 1,2]
                                           [--outer-steps 6] [--out DIR]

Each run is a fresh `farzi-fast distill --preset cpu` (ml-100k) with validation off, a
short pretraining and the inner loops of the table (POOL_LOOP); its log's per-step wall times
(after the first, which includes warm-up) give the median seconds per outer step.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from farzi_fast.distillation.presets import preset

from .bench_distill import LOOPS
from .report import write_report
from .timing import device_name

# Interconnects for the projection: sustained all-reduce bus bandwidth, bytes/s.
LINKS = {"PCIe 4.0 x16 (~20 GB/s)": 20e9, "NVLink, H100 SXM (~300 GB/s)": 300e9}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The pool loops (research/variants.toml) the scaling table was measured with: what scales
# is the number of loops, not the loop.
_POOL = LOOPS["pool"]["ml-100k"]["cpu"]
POOL_LOOP = ("--inner-steps", str(_POOL["inner_steps"]),
             "--pretrained-students", str(_POOL["pretrained_students"]))


def seconds_per_step(data: str, ranks: int, meta_batch: int, outer_steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        launch = [sys.executable, "-m", "farzi_fast.cli"] if ranks == 1 else [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
            f"--master_port={_free_port()}", "-m", "farzi_fast.cli"]
        subprocess.run([*launch, "distill", "--dataset", "ml-100k", "--data", data, "--out",
                        str(out), "--meta-batch", str(meta_batch), "--outer-steps",
                        str(outer_steps), "--validate-every", "0", "--pretrain-steps", "50",
                        *POOL_LOOP, "--quiet"], check=True, capture_output=True, text=True)
        stamps = [json.loads(line)["seconds"] for line in (out / "log.jsonl").read_text()
                  .splitlines() if "meta_loss" in line]
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(steps)


def run(data: str, meta_batch: int, ranks_list, outer_steps: int) -> dict:
    rows, base = [], None
    for ranks in ranks_list:
        seconds = seconds_per_step(data, ranks, meta_batch, outer_steps)
        base = base or seconds
        rows.append(dict(setting=f"{ranks} process(es), measured", ranks=ranks,
                         meta_batch=meta_batch, seconds_per_step=seconds,
                         steps_per_minute=60 / seconds, speedup=base / seconds))
    # projection: one inner loop's time from the 1-process run, the all-reduce from its size
    cfg = preset("ml-100k", "cpu").settings()
    mu, xi = cfg["size"]
    vocab = 1683
    elements = mu * xi * vocab if cfg["latent_dim"] is None else \
        mu * xi * cfg["latent_dim"] + cfg["latent_dim"] * vocab
    bytes_ = 4 * elements
    loop = rows[0]["seconds_per_step"] / meta_batch
    for gpus in (8,):
        for speed in (1, 20):  # the measured CPU loop, and a GPU 20x faster than this CPU
            for link, bandwidth in LINKS.items():
                k = gpus  # one loop per GPU
                reduce = 2 * (gpus - 1) / gpus * bytes_ / bandwidth
                one = k * loop / speed
                many = loop / speed + reduce
                rows.append(dict(setting=f"projected: {gpus} GPUs, loop {speed}x this CPU's, "
                                         f"{link}", ranks=gpus, meta_batch=k,
                                 seconds_per_step=many, steps_per_minute=60 / many,
                                 speedup=one / many, all_reduce_mb=bytes_ / 2**20))
    return dict(device=device_name(torch.device("cpu")), torch=torch.__version__,
                threads=os.cpu_count(), rows=rows)


COLUMNS = [("setting", "setting"), ("ranks", "processes"), ("meta_batch", "meta-batch"),
           ("seconds_per_step", "s / outer step"), ("steps_per_minute", "outer steps / min"),
           ("speedup", "speed-up")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("FARZI_FAST_DATA"))
    parser.add_argument("--meta-batch", type=int, default=2)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--outer-steps", type=int, default=6)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("--data (or FARZI_FAST_DATA) must name the folder holding ml-100k/")
    result = run(args.data, args.meta_batch, [int(r) for r in args.ranks.split(",")],
                 args.outer_steps)
    note = (f"ml-100k --preset cpu, validation off, meta-batch {args.meta_batch}; median of "
            f"{args.outer_steps - 1} outer steps; projections assume one inner loop per GPU")
    print(write_report(result, COLUMNS, "distributed", args.out, note))


if __name__ == "__main__":
    main()
