"""One rank of a 2-process distill() that tests/test_distributed.py starts by hand (a process
group the user initialised, not torchrun), to check what happens when ranks go wrong:

    python tests/distributed_worker.py die|mismatch DATA_DIR   (RANK, WORLD_SIZE, MASTER_* set)

die: rank 1 exits at outer step 2; mismatch: rank 1 asks for other settings. Prints one line
`rank R: <error class>: <message>` and exits 7 when distill() raises."""

import datetime
import os
import sys

import torch
import torch.distributed as dist

from farzi_fast import DistillConfig, distill
from farzi_fast.data import load_movielens_100k
from farzi_fast.models import sasrec


def main():
    mode, data_dir = sys.argv[1:]
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    movielens = load_movielens_100k(data_dir)
    torch.manual_seed(0)
    student = sasrec(movielens.num_items, max_len=12, dim=16, heads=1, layers=1, dropout=0.1)

    def die(step, loss, farzi):
        if mode == "die" and rank == 1 and step == 2:
            os._exit(3)

    inner_steps = 3 if mode == "mismatch" and rank == 1 else 2
    try:
        config = DistillConfig(size=(4, 6), latent_dim=4, inner_steps=inner_steps,
                               outer_steps=4, pretrained_students=1, pretrain_steps=4,
                               outer_batch=32, meta_batch=2)
        distill(student, movielens.train_batch(12), config, callback=die)
    except RuntimeError as error:
        print(f"rank {rank}: {type(error).__name__}: {error}", flush=True)
        os._exit(7)  # no process-group teardown: the peer may be gone
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
