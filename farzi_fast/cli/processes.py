"""The device a command runs on, and the torchrun process group a distillation joins."""

from __future__ import annotations

import datetime
import os
import sys

import torch


def resolve_device(args) -> None:
    """`args.device` as a device this machine has ('auto': cuda when there is a GPU)."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: this machine has no CUDA GPU "
                         f"(use --device cpu)")


def join_processes(args) -> bool:
    """Under torchrun (WORLD_SIZE > 1 in the environment): join the process group, gloo on
    CPUs and nccl on GPUs, with a timeout on every collective so that a dead rank stops the
    others; share the cores (or take one GPU each). True when it joined one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or torch.distributed.is_initialized():
        return False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if torch.device(args.device).type == "cuda":
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
        backend = "nccl"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        backend = "gloo"
    torch.distributed.init_process_group(
        backend, timeout=datetime.timedelta(seconds=args.timeout))
    return True


def leave_processes(code: int) -> None:
    """End a rank of a torchrun job: leave the process group, then the process, without the
    interpreter's teardown, where a gloo thread outliving the interpreter aborted about one
    two-rank run in six after its work was saved (docs/design.md, "Processes")."""
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
