"""One flat buffer for a module's trained parameters, and functional calls over it.

The student's parameters live as views into one contiguous buffer, so each Adam step (and
each reverse step) is one kernel launch whatever the number of parameter tensors, and one
autograd.grad call gives the whole gradient as a single flat tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call


@dataclass(frozen=True)
class FlatLayout:
    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    numel: int
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, model: nn.Module) -> FlatLayout:
        """The layout of `model`'s floating-point parameters that require grad (the trained
        ones; frozen parameters are passed to the model as constants)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        trained = [(n, p) for n, p in model.named_parameters()
                   if p.is_floating_point() and p.requires_grad]
        if not trained:
            raise ValueError("model has no floating-point parameters that require grad: "
                             "there is nothing for Adam to train")
        dtypes = {p.dtype for _, p in trained}
        devices = {p.device for _, p in trained}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(f"model parameters must share one dtype and device, got dtypes "
                             f"{sorted(map(str, dtypes))} on {sorted(map(str, devices))}")
        return cls(tuple(n for n, _ in trained), tuple(p.shape for _, p in trained),
                   sum(p.numel() for _, p in trained), trained[0][1].dtype,
                   trained[0][1].device)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        # One split rather than a slice per tensor: the backward of a split is one
        # concatenation, where each slice's backward would allocate and zero a buffer the
        # size of the whole model.
        pieces = flat.split([shape.numel() for shape in self.shapes])
        return {name: piece.view(shape)
                for name, shape, piece in zip(self.names, self.shapes, pieces)}

    def flatten(self, tensors: dict[str, torch.Tensor], what: str = "init") -> torch.Tensor:
        """Concatenate a name -> tensor dict in layout order (differentiable), after checking
        it names exactly the trained parameters with their shapes."""
        if not isinstance(tensors, dict):
            raise TypeError(f"{what} must be a dict name -> tensor, got {type(tensors).__name__}")
        missing = [n for n in self.names if n not in tensors]
        extra = [n for n in tensors if n not in self.names]
        if missing or extra:
            raise ValueError(f"{what} must name exactly the model's trained parameters; "
                             f"missing {missing}, unexpected {extra}")
        for name, shape in zip(self.names, self.shapes):
            t = tensors[name]
            if not isinstance(t, torch.Tensor) or t.shape != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{what}[{name!r}] must be a tensor of shape {tuple(shape)}, "
                                 f"got {got}")
            if t.dtype != self.dtype or t.device != self.device:
                raise ValueError(f"{what}[{name!r}] must be {self.dtype} on {self.device} like "
                                 f"the model, got {t.dtype} on {t.device}")
        return torch.cat([tensors[n].reshape(-1) for n in self.names])


class FunctionalModel:
    """Calls `model` with its trained parameters taken from a flat buffer.

    Buffers and frozen parameters are copied once, so a module that updates buffers in place
    (BatchNorm in train mode) changes the copies, never the user's model; `changed_buffers`
    tells which ones moved, which would make the recomputed gradients of the reverse pass
    differ from the forward ones.
    """

    def __init__(self, model: nn.Module, layout: FlatLayout):
        self.model = model
        self.layout = layout
        trained = set(layout.names)
        self.constants = {n: p.detach() for n, p in model.named_parameters() if n not in trained}
        self.buffers = {n: b.clone() for n, b in model.named_buffers()}
        self._originals = dict(model.named_buffers())
        # Tied tensors (one Parameter reachable under several names) are resolved once here:
        # functional_call(tie_weights=True) would search the whole module for them at every
        # call (75 us of a 1.5 ms step of the benchmark MLP).
        first_name: dict[int, str] = {}
        for name, t in (*model.named_parameters(), *model.named_buffers()):
            first_name.setdefault(id(t), name)
        self._aliases = {name: first_name[id(t)]
                         for name, t in (*model.named_parameters(remove_duplicate=False),
                                         *model.named_buffers(remove_duplicate=False))
                         if first_name[id(t)] != name}

    def bind(self, flat: torch.Tensor):
        """f(*args, **kwargs) = model(*args, **kwargs) with parameters from `flat`."""
        tensors = {**self.constants, **self.buffers, **self.layout.views(flat)}
        tensors.update({alias: tensors[name] for alias, name in self._aliases.items()})

        def f(*args, **kwargs):
            return functional_call(self.model, tensors, args, kwargs, tie_weights=False)

        return f

    def changed_buffers(self) -> list[str]:
        """Buffers whose values moved. Compared by value: BatchNorm updates its running
        statistics inside its kernel, without bumping the tensors' version counters."""
        return [n for n, b in self.buffers.items() if not torch.equal(b, self._originals[n])]
