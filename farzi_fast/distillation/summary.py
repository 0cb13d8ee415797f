"""FarziData: the distilled data summary, soft sequences softmax(logits / τ), one
distribution over the vocabulary per position. The logits are either factorised, a latent
tensor Z (μ sequences × ξ positions × d) times a decoder M (d × V) as in the paper, which
keeps the optimised part's memory independent of V, or held directly (μ × ξ × V)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import require_int
from ..files import atomic_save, safe_load
from ..models import soft_padding

FORMAT = "farzi_fast.FarziData"
# 2: optional decoder (direct logits), integrity digest; optional vocabulary and padding id
VERSION = 2


def probability_floor(dtype: torch.dtype) -> float:
    """The least probability a summary's position starts with: eps² of the logits' float.
    V of them add nothing a float can hold beside 1 (V eps² << eps for any vocabulary below
    1 / eps), and they stay far above the subnormal range, where log(tiny), the floor
    before, put one-hot positions (a summary's padding): Intel cores multiply subnormals
    slowly, and the paper preset's outer steps, half padding, took 127 s instead of 46 s on
    an Intel Xeon (an AMD EPYC took no such penalty; docs/design.md, "The start")."""
    return torch.finfo(dtype).eps ** 2


class FarziData(nn.Module):
    """μ soft sequences of ξ positions over a vocabulary of V, softmax(logits / τ).

    With `latent_dim` = d (the paper's factorisation) the logits are Z M, Z: μ × ξ × d (the
    `latent`), M: d × V (the `decoder`); with `latent_dim=None` the μ × ξ × V logits are
    optimised directly (`latent` holds them, `decoder` is None): the paper's ablation.

    Args:
        num_sequences, seq_len, vocab_size: μ, ξ and V.
        latent_dim: d of the factorisation, or None for direct logits.
        temperature: τ of the softmax.
        generator: the random initialisation's generator.

    Raises:
        ValueError: a size that is not a positive int, or τ <= 0.

    `soft()` gives the μ × ξ × V distributions (the data students train on), `save(path)` /
    `FarziData.load(path)` write and read it (atomically, never executing code from the
    file), `sample()` draws hard sequences, `describe(vocabulary, titles)` attaches the data's
    own ids."""

    # set by distill(): the outer step the summary comes from, and the steps it skipped
    selected_step: int | None
    skipped_steps: list[int]

    def __init__(self, num_sequences: int, seq_len: int, vocab_size: int,
                 latent_dim: int | None = 8, temperature: float = 1.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        for name, value in (("num_sequences", num_sequences), ("seq_len", seq_len),
                            ("vocab_size", vocab_size)):
            require_int(name, value)
        if latent_dim is not None:
            require_int("latent_dim", latent_dim)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        # what each id means in the data distilled (index 0 = padding), set by whoever knows
        # it (the CLI, from the data set); saved with the summary so that it reads on its own
        self.vocabulary: list[str] | None = None
        self.titles: list[str] | None = None
        # the id that pads short histories (distill() sets it from the student): positions
        # holding it are no data (`soft_padding`), and `entropy`/`inspect` leave them out
        self.padding_id: int | None = None
        if latent_dim is None:
            self.latent = nn.Parameter(
                torch.randn(num_sequences, seq_len, vocab_size, generator=generator))
            self.register_parameter("decoder", None)
        else:
            self.latent = nn.Parameter(
                torch.randn(num_sequences, seq_len, latent_dim, generator=generator))
            self.decoder = nn.Parameter(
                torch.randn(latent_dim, vocab_size, generator=generator) * latent_dim ** -0.5)

    @classmethod
    def from_distributions(cls, probs: torch.Tensor, latent_dim: int | None = 8,
                           temperature: float = 1.0, generator: torch.Generator | None = None,
                           fit_steps: int = 500) -> FarziData:
        """The summary closest to the soft sequences `probs` (μ × ξ × V, rows summing to 1):
        exact logits when unfactorised; otherwise (Z, M) fitted by `fit_steps` Adam steps
        on the cross-entropy to `probs` (a factorised summary cannot hold every target)."""
        if probs.dim() != 3 or not probs.is_floating_point():
            raise ValueError(f"probs must be a float tensor μ × ξ × V, got "
                             f"{tuple(probs.shape)}")
        mu, xi, vocab = probs.shape
        data = cls(mu, xi, vocab, latent_dim, temperature, generator).to(probs.device)
        with torch.no_grad():
            if latent_dim is None:
                data.latent.copy_(probs.clamp_min(probability_floor(data.latent.dtype)).log()
                                  * temperature)
                return data
        optimizer = torch.optim.Adam(data.parameters(), lr=0.05)
        with torch.enable_grad():
            for _ in range(fit_steps):
                loss = -(probs * data.logits().div(temperature).log_softmax(-1)).sum(-1).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return data

    @property
    def factorised(self) -> bool:
        return self.decoder is not None

    @property
    def meta(self) -> tuple:
        """The tensors the outer loop optimises: (Z, M), or the logits alone."""
        return (self.latent, self.decoder) if self.factorised else (self.latent,)

    @property
    def size(self) -> tuple[int, int]:
        mu, xi = self.latent.shape[:2]
        return int(mu), int(xi)

    @property
    def vocab_size(self) -> int:
        return self.decoder.shape[1] if self.factorised else self.latent.shape[2]

    def logits(self, *meta) -> torch.Tensor:
        """μ × ξ × V logits (before the temperature) from `meta` (default: `self.meta`)."""
        latent, *decoder = meta or self.meta
        return latent @ decoder[0] if decoder else latent

    def soft(self, *meta) -> torch.Tensor:
        """The soft sequences, μ × ξ × V (rows sum to 1). `meta` replaces the module's own
        tensors (the engine passes them in)."""
        return (self.logits(*meta) / self.temperature).softmax(-1)

    def position_entropy(self) -> torch.Tensor:
        """Entropy of each position's distribution, μ × ξ, in nats (ln V is uniform); NaN at
        padding positions (`soft_padding` on `padding_id`), which hold no data."""
        with torch.no_grad():
            log_probs = (self.logits() / self.temperature).log_softmax(-1)
            probs = log_probs.exp()
            entropy = -(probs * log_probs).sum(-1)
            padding = soft_padding(probs, self.padding_id)
            return entropy if padding is None else entropy.masked_fill(padding, math.nan)

    def entropy(self) -> float:
        """Mean entropy of the positions that are not padding, in nats."""
        return float(self.position_entropy().nanmean())

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None = None,
               greedy: bool = False) -> torch.Tensor:
        """Hard sequences, μ × ξ item ids: sampled from each position's distribution, or its
        argmax when `greedy`."""
        probs = self.soft()
        if greedy:
            return probs.argmax(-1)
        flat = probs.reshape(-1, probs.shape[-1]).cpu()
        ids = torch.multinomial(flat, 1, generator=generator).view(probs.shape[:2])
        return ids.to(probs.device)

    def save(self, path) -> None:
        atomic_save({"format": FORMAT, "version": VERSION, "temperature": self.temperature,
                     "latent": self.latent.detach().cpu(),
                     "decoder": self.decoder.detach().cpu() if self.factorised else None,
                     "vocabulary": self.vocabulary, "titles": self.titles,
                     "padding_id": self.padding_id},
                    path)

    def describe(self, vocabulary, titles=None) -> None:
        """Attach the data's vocabulary (V strings, index 0 = padding) and optional titles."""
        for name, names in (("vocabulary", vocabulary), ("titles", titles)):
            if names is not None and (not isinstance(names, list) or len(names) != self.vocab_size
                                      or not all(isinstance(x, str) for x in names)):
                got = len(names) if isinstance(names, list) else type(names).__name__
                raise ValueError(f"{name} must be a list of {self.vocab_size} strings (one per "
                                 f"id of the summary), got {got}")
        self.vocabulary, self.titles = vocabulary, titles

    @classmethod
    def load(cls, path, device=None) -> FarziData:
        state = safe_load(path, "FarziData")
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a FarziData file (no {FORMAT!r} marker)")
        if state.get("version") != VERSION:
            raise ValueError(f"{path}: FarziData format version {state.get('version')} is not "
                             f"supported (expected {VERSION})")
        latent, decoder = state.get("latent"), state.get("decoder")
        factorised_ok = (isinstance(decoder, torch.Tensor) and decoder.dim() == 2
                         and isinstance(latent, torch.Tensor) and latent.dim() == 3
                         and latent.shape[2] == decoder.shape[0])
        direct_ok = decoder is None and isinstance(latent, torch.Tensor) and latent.dim() == 3
        if not (factorised_ok or direct_ok) or not isinstance(latent, torch.Tensor):
            raise ValueError(f"{path}: latent must be μ × ξ × d with a decoder d × V, or "
                             f"μ × ξ × V logits without one")
        if not all(bool(t.isfinite().all()) for t in (latent, decoder) if t is not None):
            raise ValueError(f"{path}: the summary holds NaN or infinite values")
        vocab = decoder.shape[1] if isinstance(decoder, torch.Tensor) else latent.shape[2]
        data = cls(latent.shape[0], latent.shape[1], vocab,
                   latent.shape[2] if factorised_ok else None, float(state["temperature"]))
        with torch.no_grad():
            for mine, saved in zip(data.meta, (latent, decoder)):
                mine.copy_(saved)
        try:
            data.describe(state.get("vocabulary"), state.get("titles"))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        padding_id = state.get("padding_id")  # absent from files of earlier releases
        if padding_id is not None and not (type(padding_id) is int and 0 <= padding_id < vocab):
            raise ValueError(f"{path}: padding_id must be an id in [0, {vocab}) or None, got "
                             f"{padding_id!r}")
        data.padding_id = padding_id
        return data.to(device) if device is not None else data
