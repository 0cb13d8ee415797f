"""distill() over processes with torch.distributed (gloo, 2 CPU processes): the same summary
as one process with the same meta-batch, exact resume, and clean failures when a rank dies
or was started with other settings."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from farzi_fast.distillation.summary import FarziData

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or
                                not torch.distributed.is_gloo_available()
                                or not Path("/proc/self/stat").exists(),
                                reason="needs torch.distributed with gloo, and Linux /proc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def farzi_cli(data_dir, out, *extra, ranks=1, steps=3, wait=True):
    """`farzi-fast distill` of a tiny configuration, in 1 process or under torchrun; with
    wait=False the running process."""
    args = ["--dataset", "ml-100k", "--data", str(data_dir), "--max-len", "12", "--dim", "16",
            "--layers", "1", "--size", "4x6", "--latent-dim", "4", "--inner-steps", "2",
            "--outer-steps", str(steps), "--pretrained-students", "1", "--pretrain-steps", "4",
            "--validate-every", "0", "--outer-batch", "32", "--quiet", "--out", str(out), *extra]
    launch = [sys.executable, "-m", "farzi_fast.cli"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
        f"--master_port={free_port()}", "-m", "farzi_fast.cli"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not wait:
        return subprocess.Popen([*launch, "distill", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
    return subprocess.run([*launch, "distill", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _failure(result) -> str:
    """A failed run's own error lines (torchrun appends its report and traceback after)."""
    return "\n".join(line for line in result.stderr.splitlines()
                     if "Traceback" not in line and not line.startswith("  "))[:3000]


def children(pid: int) -> list[int]:
    """The processes `pid` started. torchrun puts each rank in a session of its own, so
    killing torchrun's process group would leave the ranks running."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def read_log(run):
    return [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]


def summary(run):
    return FarziData.load(Path(run) / "farzi.pt").meta


def test_two_ranks_give_the_summary_of_one_process(data_dir, tmp_path):
    validated = ["--meta-batch", "2", "--validate-every", "2", "--train-steps", "5"]
    one = farzi_cli(data_dir, tmp_path / "one", *validated)
    two = farzi_cli(data_dir, tmp_path / "two", *validated, ranks=2)
    assert one.returncode == 0, _failure(one)
    assert two.returncode == 0, _failure(two)
    for a, b in zip(summary(tmp_path / "one"), summary(tmp_path / "two")):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)  # measured: equal bit for bit
    losses = {run: [e["meta_loss"] for e in read_log(tmp_path / run) if "meta_loss" in e]
              for run in ("one", "two")}
    assert losses["one"] == losses["two"] and len(losses["two"]) == 3  # the whole trajectory
    checks = [e["step"] for e in read_log(tmp_path / "two") if "valid" in e]
    assert checks == [0, 2, 3]  # rank 0 validated (and alone wrote the log)
    # a meta-batch of 1 is another run: the comparison above is not vacuous
    other = farzi_cli(data_dir, tmp_path / "mb1", "--validate-every", "2", "--train-steps", "5")
    assert other.returncode == 0
    assert [e["meta_loss"] for e in read_log(tmp_path / "mb1") if "meta_loss" in e] != \
        losses["one"]


def test_two_ranks_killed_then_resumed_equal_a_straight_run(data_dir, tmp_path):
    extra = ["--meta-batch", "2", "--checkpoint-every", "1"]
    straight = farzi_cli(data_dir, tmp_path / "straight", *extra, ranks=2, steps=5)
    assert straight.returncode == 0, _failure(straight)
    cut = tmp_path / "cut"
    run = farzi_cli(data_dir, cut, *extra, ranks=2, steps=5, wait=False)
    log = cut / "log.jsonl"
    deadline = time.monotonic() + 240
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):
        assert run.poll() is None and time.monotonic() < deadline, "run ended before the kill"
        time.sleep(0.05)
    for pid in [run.pid, *children(run.pid)]:  # torchrun and both ranks, mid-run
        os.kill(pid, signal.SIGKILL)
    run.wait()
    resumed = farzi_cli(data_dir, cut, *extra, "--resume", ranks=2, steps=5)
    assert resumed.returncode == 0, _failure(resumed)
    for a, b in zip(summary(tmp_path / "straight"), summary(cut)):
        assert torch.equal(a, b)


def test_meta_batch_must_divide_over_the_ranks(data_dir, tmp_path):
    result = farzi_cli(data_dir, tmp_path / "run", "--meta-batch", "3", ranks=2)
    assert result.returncode != 0
    assert "farzi-fast: error: --meta-batch (3) must be divisible by the number of processes (2)" in result.stderr
    assert "farzi_fast/" not in result.stderr  # torchrun reports the exit; no trace of ours
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode, expected", [
    ("die", "rank 0: RankFailureError: rank 0: the meta-gradient all-reduce failed, another "
            "rank probably died"),
    ("mismatch", "RankMismatchError: ranks [1] hold a different configuration"),
])
def test_a_rank_that_dies_or_differs_stops_the_others(data_dir, mode, expected):
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(HERE / "distributed_worker.py"), mode,
                                       str(data_dir)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=120) for p in procs]  # no hang: well within the timeout
    rank0_out = outputs[0][0]
    assert procs[0].returncode == 7, outputs[0][1][-2000:]
    assert expected in rank0_out


class _Exited(Exception):
    """What the stand-in for os._exit raises: the process would have ended there."""


@pytest.mark.parametrize("outcome, code", [("done", 0), ("bad input", 2), ("bug", None)])
def test_a_rank_leaves_without_the_interpreters_teardown(monkeypatch, tmp_path, outcome, code):
    """Under torchrun a rank leaves the process group and then the process by os._exit (gloo
    threads can abort the interpreter's teardown after a finished run); a bug's traceback
    still propagates, after the group is left."""
    from farzi_fast import cli
    from farzi_fast.cli import processes
    from farzi_fast.cli.commands import distill as distill_command

    left = []

    def run(args):
        if outcome == "bad input":
            raise ValueError("--size: bad")
        if outcome == "bug":
            raise RuntimeError("a bug")
        return 0

    def exit_now(status):
        left.append(status)
        raise _Exited

    monkeypatch.setattr(processes, "join_processes", lambda args: True)
    monkeypatch.setattr(distill_command, "run", run)
    monkeypatch.setattr(torch.distributed, "destroy_process_group",
                        lambda: left.append("destroyed"))
    monkeypatch.setattr(os, "_exit", exit_now)
    with pytest.raises(RuntimeError if outcome == "bug" else _Exited):
        cli.main(["distill", "--dataset", "ml-100k", "--out", str(tmp_path / "run")])
    assert left == (["destroyed"] if code is None else ["destroyed", code])
