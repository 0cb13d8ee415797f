"""Meta-parameters as the user keeps them: loose tensors, or an nn.Module (a distilled-data
module with a `get_batch(t)`, say) that the inner loss receives or closes over.

The engine differentiates flat tensors. A module in `meta=` stands for its parameters that
require grad: while the inner loss runs, the module's parameters are swapped for the
engine's copies (torch's own reparametrisation, as torch.func.functional_call does), so any
method of it, called from anywhere in the loss, computes with the tensors the reverse pass
differentiates. Its gradients land in the parameters' `.grad`.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.stateless import _reparametrize_module

from .flat import FlatLayout


@dataclass(frozen=True)
class _ModuleSpan:
    """meta item `index` is `module`; its trained parameters `names` are flat[start:start+n]."""

    index: int
    module: nn.Module
    names: tuple[str, ...]
    start: int


@dataclass(frozen=True)
class MetaArguments:
    """The meta items as given, and the flat tensors the engine differentiates for them."""

    items: tuple
    tensors: tuple[torch.Tensor, ...]
    modules: tuple[_ModuleSpan, ...]

    @property
    def module_names(self) -> dict[int, str]:
        """flat index -> "meta[i].name" for the modules' parameters."""
        return {span.start + k: f"meta[{span.index}].{name}"
                for span in self.modules for k, name in enumerate(span.names)}

    def wrap(self, loss_fn):
        """loss_fn(f, t, *items) as a function of the flat tensors."""
        if not self.modules:
            return loss_fn

        def loss_over_tensors(f, t, *tensors):
            with contextlib.ExitStack() as stack:
                return loss_fn(f, t, *self.arguments(stack, tensors))

        return loss_over_tensors

    def arguments(self, stack: contextlib.ExitStack, tensors) -> list:
        """The items loss_fn receives, with every module reparametrised (until `stack`
        closes) by its slice of `tensors`."""
        out = []
        for span, own in self._per_item(tensors):
            if span is None:
                out.append(own[0])
            else:
                stack.enter_context(_reparametrize_module(span.module,
                                                          dict(zip(span.names, own))))
                out.append(span.module)
        return out

    def regroup(self, grads) -> tuple:
        """One entry per item: a tensor's gradient, or a module's as a dict name -> gradient
        (also added to its parameters' `.grad`, as a backward would)."""
        out: list = []
        for span, own in self._per_item(grads):
            if span is None:
                out.append(own[0])
                continue
            by_name = dict(zip(span.names, own))
            params = dict(span.module.named_parameters())
            for name, grad in by_name.items():
                param = params[name]
                param.grad = grad.clone() if param.grad is None else param.grad + grad
            out.append(by_name)
        return tuple(out)

    def _per_item(self, flat):
        """(the item's module span or None for a tensor, its slice of `flat`) per item."""
        spans = {span.index: span for span in self.modules}
        position = 0
        for index in range(len(self.items)):
            span = spans.get(index)
            count = 1 if span is None else len(span.names)
            yield span, flat[position:position + count]
            position += count


def warn_untouched(module_meta: dict, needs, touched) -> None:
    """Warn, naming them, about parameters of meta modules that no step's inner loss used
    (their meta-gradient is then zero through the inner loop)."""
    if touched is None:
        return
    wanted = [i for i, need in enumerate(needs) if need]
    unused = [module_meta[i] for i, used in zip(wanted, touched) if not used and i in module_meta]
    if unused:
        warnings.warn(f"the inner loss never used {', '.join(unused)}: their gradient through "
                      f"the inner loop is zero (pass only the parameters it reads, or "
                      f"requires_grad_(False) the others)", stacklevel=3)


def expand(meta, layout: FlatLayout) -> MetaArguments:
    """Check `meta` (a tuple or list of tensors and nn.Modules) and flatten it.

    Raises:
        TypeError: not a tuple/list, or an item that is neither a tensor nor a module.
        ValueError: a tensor on another device than the model, or integer tensors that require
            grad, or a module with no parameter that requires grad.
    """
    if isinstance(meta, (torch.Tensor, nn.Module)) or not isinstance(meta, (tuple, list)):
        raise TypeError("meta must be a tuple or list of tensors or modules, e.g. meta=(x,) or "
                        "meta=(distilled_data,)")
    tensors: list[torch.Tensor] = []
    modules = []
    for i, item in enumerate(meta):
        if isinstance(item, nn.Module):
            named = [(n, p) for n, p in item.named_parameters() if p.requires_grad]
            if not named:
                raise ValueError(f"meta[{i}] is a {type(item).__name__} with no parameter that "
                                 f"requires grad: there is nothing to differentiate in it")
            modules.append(_ModuleSpan(i, item, tuple(n for n, _ in named), len(tensors)))
            for name, p in named:
                tensors.append(_checked(p, f"meta[{i}].{name}", layout))
        elif isinstance(item, torch.Tensor):
            tensors.append(_checked(item, f"meta[{i}]", layout))
        else:
            raise TypeError(f"meta[{i}] must be a tensor or an nn.Module, got "
                            f"{type(item).__name__}")
    return MetaArguments(tuple(meta), tuple(tensors), tuple(modules))


def _checked(x: torch.Tensor, name: str, layout: FlatLayout) -> torch.Tensor:
    if x.device != layout.device:
        raise ValueError(f"{name} is on {x.device}, the model on {layout.device}: move it "
                         f"with .to({str(layout.device)!r})")
    if x.requires_grad and not x.is_floating_point():
        raise ValueError(f"{name} requires grad but is {x.dtype}")
    return x
