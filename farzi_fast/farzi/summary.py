"""FarziData: the distilled data summary. A latent tensor Z (μ sequences × ξ positions × d)
and a decoder M (d × V); the synthetic data are soft sequences softmax(Z M / τ), one
distribution over the vocabulary per position. Optimising (Z, M) instead of μ × ξ × V logits
keeps the optimised part's memory independent of V and regularises the summary (the paper's
factorisation)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .._checks import require_int

FORMAT = "farzi_fast.FarziData"
VERSION = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves a
    half-written file under `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def safe_load(path, what: str):
    """torch.load(weights_only=True): tensors and plain containers only, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # corrupted, truncated, foreign or pickled-code files
        raise ValueError(f"{path} is not a readable {what} file ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:200]})") from None


class FarziData(nn.Module):
    def __init__(self, num_sequences: int, seq_len: int, vocab_size: int, latent_dim: int,
                 temperature: float = 1.0, generator: torch.Generator | None = None):
        super().__init__()
        for name, value in (("num_sequences", num_sequences), ("seq_len", seq_len),
                            ("vocab_size", vocab_size), ("latent_dim", latent_dim)):
            require_int(name, value)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.latent = nn.Parameter(
            torch.randn(num_sequences, seq_len, latent_dim, generator=generator))
        self.decoder = nn.Parameter(
            torch.randn(latent_dim, vocab_size, generator=generator) * latent_dim ** -0.5)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.latent.shape[:2])

    @property
    def vocab_size(self) -> int:
        return self.decoder.shape[1]

    def soft(self, latent=None, decoder=None) -> torch.Tensor:
        """The soft sequences, μ × ξ × V (rows sum to 1). `latent`/`decoder` replace the
        module's own (the engine passes them as meta tensors)."""
        latent = self.latent if latent is None else latent
        decoder = self.decoder if decoder is None else decoder
        return (latent @ decoder / self.temperature).softmax(-1)

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
                     "decoder": self.decoder.detach().cpu()}, path)

    @classmethod
    def load(cls, path, device=None) -> "FarziData":
        state = safe_load(path, "FarziData")
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a FarziData file (no {FORMAT!r} marker)")
        if state.get("version") != VERSION:
            raise ValueError(f"{path}: FarziData format version {state.get('version')} is not "
                             f"supported (expected {VERSION})")
        latent, decoder = state.get("latent"), state.get("decoder")
        if not (isinstance(latent, torch.Tensor) and latent.dim() == 3
                and isinstance(decoder, torch.Tensor) and decoder.dim() == 2
                and latent.shape[2] == decoder.shape[0]):
            raise ValueError(f"{path}: latent must be μ × ξ × d and decoder d × V")
        data = cls(latent.shape[0], latent.shape[1], decoder.shape[1], latent.shape[2],
                   float(state["temperature"]))
        with torch.no_grad():
            data.latent.copy_(latent)
            data.decoder.copy_(decoder)
        return data.to(device) if device is not None else data
