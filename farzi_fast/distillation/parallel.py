"""What distill() needs from torch.distributed to split an outer step's meta-batch over
processes: which inner loops are this rank's, the mean of the meta-gradients over all of
them (all-reduce), one rank's validation score for all, and checks that the ranks run the
same configuration and hold the same summary. A single process (no process group) is the
world of one: every function then does nothing collective."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


class RankMismatchError(RuntimeError):
    """The ranks disagree (configuration, data or summary): they must not go on."""


class RankFailureError(RuntimeError):
    """A collective failed: another rank died, stalled past the timeout, or left."""


@dataclass(frozen=True)
class Ranks:
    group: Any  # a torch.distributed process group, or None for a single process
    rank: int = 0
    world: int = 1

    @classmethod
    def of(cls, group=None) -> Ranks:
        """The given group, else the default one when the user (or torchrun) initialised
        torch.distributed, else a single process."""
        if group is None and dist.is_available() and dist.is_initialized():
            group = dist.group.WORLD
        if group is None:
            return cls(None)
        return cls(group, dist.get_rank(group), dist.get_world_size(group))

    @property
    def leader(self) -> bool:
        """Rank 0: the one that validates and writes files."""
        return self.rank == 0

    def share(self, count: int) -> range:
        """This rank's indices of `count` inner loops (count divisible by the world)."""
        per = count // self.world
        return range(self.rank * per, (self.rank + 1) * per)

    def _collective(self, what: str, call):
        try:
            return call()
        except RuntimeError as error:  # gloo: a peer closed its connection or timed out
            raise RankFailureError(f"rank {self.rank}: {what} failed, another rank probably died "
                               f"or stalled ({str(error).splitlines()[0][:160]})") from None

    def barrier(self) -> None:
        if self.world > 1:
            self._collective("waiting for the other ranks", lambda: dist.barrier(self.group))

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """In place: each tensor becomes its sum over the ranks."""
        if self.world == 1:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self._collective("the meta-gradient all-reduce",
                         lambda: dist.all_reduce(flat, group=self.group))
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """In place: every rank's tensors become rank 0's."""
        if self.world == 1:
            return
        flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
        self._collective("broadcasting rank 0's starting state",
                         lambda: dist.broadcast(flat, src=self._global(0), group=self.group))
        offset = 0
        for t in tensors:
            t.data.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def from_leader(self, value: float | None) -> float | None:
        """Rank 0's value (a validation score), on every rank."""
        if self.world == 1:
            return value
        box = [value]
        self._collective("broadcasting the validation score",
                         lambda: dist.broadcast_object_list(box, src=self._global(0),
                                                            group=self.group))
        return box[0]

    def agree(self, what: str, value) -> None:
        """Refuse to go on unless every rank holds the same `value` (JSON-able)."""
        if self.world == 1:
            return
        digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
        gathered = [None] * self.world
        self._collective(f"comparing the {what}",
                         lambda: dist.all_gather_object(gathered, digest, group=self.group))
        differing = [r for r, d in enumerate(gathered) if d != gathered[0]]
        if differing:
            raise RankMismatchError(f"ranks {differing} hold a different {what} from rank 0; "
                                    f"every rank must be started with the same settings")

    def _global(self, rank: int) -> int:
        return dist.get_global_rank(self.group, rank) if self.group is not dist.group.WORLD \
            else rank


def checksum(tensors) -> list[float]:
    """Sum and sum of squares in float64, enough to see two ranks' summaries drift apart."""
    return [float(sum(t.detach().double().sum() for t in tensors)),
            float(sum(t.detach().double().square().sum() for t in tensors))]
