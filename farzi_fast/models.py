"""Students for Farzi: causal self-attention models over event sequences that take hard ids
or soft inputs (a distribution over the vocabulary at each position, multiplied into the
embedding table), so the same model trains on real data and on a FarziData summary.

Attention is written with plain matmuls so that the double backward the meta-gradient needs
is ordinary autograd on every device.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import require_int
from .data.datasets import PADDING_ID


def soft_padding(x: torch.Tensor, padding_id: int | None) -> torch.Tensor | None:
    """Which positions of soft sequences (... × seq × vocab) are padding: those holding most
    of their mass on `padding_id`, as a summary's positions before a short history do (a
    left-padded history, softly). None without a padding id."""
    return None if padding_id is None else x[..., padding_id] > 0.5


def check_inputs(x: torch.Tensor, vocab_size: int, max_len: int) -> None:
    """What every student accepts: hard ids (long, batch × seq) or soft inputs (float,
    batch × seq × vocab_size), at most max_len positions."""
    if x.is_floating_point():
        if x.dim() != 3 or x.shape[-1] != vocab_size:
            raise ValueError(f"soft inputs must be batch x seq x {vocab_size}, got "
                             f"{tuple(x.shape)}")
    elif x.dim() != 2:
        raise ValueError(f"hard inputs must be batch x seq ids, got {tuple(x.shape)}")
    if x.shape[1] > max_len:
        raise ValueError(f"sequences of {x.shape[1]} exceed max_len={max_len}")


def check_sizes(dropout: float, **sizes: int) -> None:
    """What every student's constructor refuses: sizes that are not positive ints, a dropout
    outside [0, 1)."""
    for name, value in sizes.items():
        require_int(name, value)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")


def embed_inputs(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Hard ids looked up in `table`, soft inputs multiplied into it."""
    return x @ table if x.is_floating_point() else table[x]


def embed_real(x: torch.Tensor, table: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """Soft inputs (batch × seq × vocab) multiplied into `table`, zero where `padding`: the
    padding positions' products, most of a short-history summary's, are never computed."""
    h = x.new_zeros(*x.shape[:-1], table.shape[-1])
    real = ~padding
    return h.index_put((real,), x[real] @ table)


def embedded_real_first(x: torch.Tensor, table: torch.Tensor,
                        padding_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For students that read a history in order whatever padding sits in it: the embedding
    (`table`) of each row's real items (not `padding_id`; for soft inputs, not
    `soft_padding`) moved to its front in order, and the count of real items at or before
    each position (`back_in_place`'s index). Rows are reordered after embedding, in the
    model's width rather than over the vocabulary; soft padding is never multiplied in."""
    padding = soft_padding(x, padding_id) if x.is_floating_point() else x == padding_id
    assert padding is not None  # padding_id is an id
    h = embed_real(x, table, padding) if x.is_floating_point() else table[x]
    order = torch.argsort(padding.to(torch.uint8), dim=1, stable=True)  # real items first
    return h.gather(1, order[..., None].expand_as(h)), (~padding).long().cumsum(1)


def back_in_place(h: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """States computed over `embedded_real_first` rows, put back: each position takes the
    state after the last real item at or before it, the zero (no-history) state when none."""
    state = h.gather(1, (seen - 1).clamp_min(0)[..., None].expand_as(h))
    return torch.where((seen > 0)[..., None], state, 0.0)


class SequenceStudent(nn.Module):
    """A next-item model split in two: `features(x)` (batch × seq × dim, from hard ids or
    soft inputs) and `output(h)` (logits over the vocabulary), so that ranking the last
    position computes its logits only (`training.metrics.last_logits`)."""

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Next-item logits, batch × seq × vocab; with `positions` (bool, batch × seq), only
        those positions' logits, n × vocab in row-major order. A loss that ignores padding
        targets asks for the others only: on short histories most of a row is padding, and
        the logits over a large catalogue are most of a step's cost."""
        h = self.features(x)
        return self.output(h if positions is None else h[positions])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def output(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LinearOutputStudent(SequenceStudent):
    """A SequenceStudent whose logits are a linear layer `out` after dropout `drop`."""

    out: nn.Linear
    drop: nn.Dropout

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """Next-item logits (... × vocab) from `features` (... × dim)."""
        return self.out(self.drop(h))


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        # No bias on q, k, v: a key bias shifts every score of a row equally and softmax
        # ignores it, so its true gradient is 0; Adam would turn rounding noise there into
        # lr-sized steps, an ill-conditioned direction for any meta-gradient method.
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.heads = heads

    def forward(self, h: torch.Tensor, key_padding: torch.Tensor | None) -> torch.Tensor:
        b, s, d = h.shape
        q, k, v = (t.view(b, s, self.heads, d // self.heads).transpose(1, 2)
                   for t in self.qkv(h).chunk(3, dim=-1))
        scores = q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5
        blocked = torch.ones(s, s, dtype=torch.bool, device=h.device).triu(1)
        if key_padding is not None:  # (b, s) True where the position is padding
            blocked = blocked | key_padding[:, None, None, :]
            blocked = blocked & ~torch.eye(s, dtype=torch.bool, device=h.device)  # no empty rows
        attn = self.drop(scores.masked_fill(blocked, float("-inf")).softmax(-1))
        return self.proj((attn @ v).transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, h, key_padding):
        h = h + self.drop(self.attn(self.norm1(h), key_padding))
        return h + self.drop(self.ff(self.norm2(h)))


class CausalTransformer(SequenceStudent):
    """Pre-norm causal Transformer with a tied input/output embedding.

    ``forward(x)`` takes hard ids (long, batch × seq) or soft inputs (float,
    batch × seq × vocab, rows summing to 1) and returns next-item logits, batch × seq × vocab.
    With `padding_id` set, hard ids equal to it and soft positions whose mass sits on it
    (`soft_padding`) are padding: masked as keys and zero inputs.
    A sequence shorter than max_len takes the first positions (`align="left"`: a text window
    starts at position 0) or the last ones (`align="right"`: histories are left-padded, so
    the newest item always sits at position max_len - 1, however long the row).
    """

    def __init__(self, vocab_size: int, max_len: int, dim: int = 64, heads: int = 2,
                 layers: int = 2, dropout: float = 0.1, padding_id: int | None = None,
                 align: str = "left"):
        super().__init__()
        check_sizes(dropout, vocab_size=vocab_size, max_len=max_len, dim=dim, heads=heads,
                    layers=layers)
        if align not in ("left", "right"):
            raise ValueError(f"align must be 'left' or 'right', got {align!r}")
        self.vocab_size, self.max_len, self.padding_id = vocab_size, max_len, padding_id
        self.align = align
        self.embed = nn.Parameter(torch.randn(vocab_size, dim) * dim ** -0.5)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """Next-item logits (... × vocab) from `features` (... × dim): the tied embedding."""
        return self.norm(h) @ self.embed.T

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """batch × seq × dim: what `output` turns into logits (scoring one position of a
        row needs its row of features only)."""
        check_inputs(x, self.vocab_size, self.max_len)
        if x.is_floating_point():
            key_padding = soft_padding(x, self.padding_id)
            h = x @ self.embed if key_padding is None else \
                embed_real(x, self.embed, key_padding)
        else:
            h = self.embed[x]
            key_padding = None if self.padding_id is None else x == self.padding_id
            if key_padding is not None:
                h = h.masked_fill(key_padding[..., None], 0.0)
        length = x.shape[1]
        positions = self.pos[self.max_len - length:] if self.align == "right" else \
            self.pos[:length]
        h = self.drop(h + positions)
        for block in self.blocks:
            h = block(h, key_padding)
        return h


def sasrec(num_items: int, max_len: int = 200, dim: int = 50, heads: int = 1, layers: int = 2,
           dropout: float = 0.2) -> CausalTransformer:
    """SASRec (Kang & McAuley, 2018) with the Farzi paper's defaults. Item ids are 1..num_items,
    PADDING_ID (0) is padding; the vocabulary is num_items + 1. Like the original, which
    left-pads every sequence to max_len, a short row (a summary's) ends at the last position."""
    return CausalTransformer(num_items + 1, max_len, dim, heads, layers, dropout,
                             padding_id=PADDING_ID, align="right")


def transformer_lm(vocab_size: int, max_len: int = 64, dim: int = 64, heads: int = 2,
                   layers: int = 2, dropout: float = 0.1) -> CausalTransformer:
    """A small causal Transformer language model."""
    return CausalTransformer(vocab_size, max_len, dim, heads, layers, dropout)


class GRU4Rec(LinearOutputStudent):
    """GRU4Rec (Hidasi et al., 2016): item embedding, a GRU, an output layer over the
    vocabulary. Used to check that a summary teaches architectures other than the one it was
    distilled with; it takes hard ids or soft inputs like CausalTransformer.

    Padding (`padding_id`: hard ids equal to it, soft positions whose mass sits on it) may
    sit anywhere in a row: the GRU runs over the row's real items only (packed), so a
    history reads the same whatever its padding, and a padding position outputs what the
    last real item before it does (the no-history output when there is none)."""

    def __init__(self, vocab_size: int, max_len: int, dim: int = 64, layers: int = 1,
                 dropout: float = 0.2, padding_id: int | None = None):
        super().__init__()
        check_sizes(dropout, vocab_size=vocab_size, max_len=max_len, dim=dim, layers=layers)
        self.vocab_size, self.max_len, self.padding_id = vocab_size, max_len, padding_id
        self.embed = nn.Parameter(torch.randn(vocab_size, dim) * dim ** -0.5)
        self.gru = nn.GRU(dim, dim, layers, batch_first=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dim, vocab_size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """batch × seq × dim: what `output` turns into logits."""
        check_inputs(x, self.vocab_size, self.max_len)
        if self.padding_id is None:
            return self.gru(self.drop(embed_inputs(x, self.embed)))[0]
        inputs, seen = embedded_real_first(x, self.embed, self.padding_id)
        packed = nn.utils.rnn.pack_padded_sequence(
            self.drop(inputs), seen[:, -1].clamp_min(1).cpu(),
            batch_first=True, enforce_sorted=False)
        h, _ = nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True,
                                                total_length=x.shape[1])
        return back_in_place(h, seen)


def gru4rec(num_items: int, max_len: int = 200, dim: int = 64, layers: int = 1,
            dropout: float = 0.2) -> GRU4Rec:
    """GRU4Rec over items 1..num_items, PADDING_ID (0) padding (vocabulary num_items + 1)."""
    return GRU4Rec(num_items + 1, max_len, dim, layers, dropout, padding_id=PADDING_ID)


class CausalCNN(LinearOutputStudent):
    """A NextItNet-style recommender (Yuan et al., 2019): item embedding, residual blocks of
    dilated causal 1-D convolutions (dilations 1, 2, 4, 8, ...: two per block), an output
    layer over the vocabulary. A third architecture, neither attention nor recurrence, to
    judge summaries distilled with the other two; it takes hard ids or soft inputs like them.
    Padding is skipped as GRU4Rec skips it: the real items are read as one history."""

    def __init__(self, vocab_size: int, max_len: int, dim: int = 64, blocks: int = 2,
                 kernel: int = 3, dropout: float = 0.2, padding_id: int | None = None):
        super().__init__()
        check_sizes(dropout, vocab_size=vocab_size, max_len=max_len, dim=dim, blocks=blocks,
                    kernel=kernel)
        self.vocab_size, self.max_len, self.padding_id = vocab_size, max_len, padding_id
        self.embed = nn.Parameter(torch.randn(vocab_size, dim) * dim ** -0.5)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel, dilation=2 ** i)
                                   for i in range(2 * blocks))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2 * blocks))
        # each convolution's causal left padding: (kernel - 1) times its dilation
        self.left_pads = [(kernel - 1) * 2 ** i for i in range(2 * blocks)]
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dim, vocab_size)

    def _convolve(self, h: torch.Tensor) -> torch.Tensor:
        for i in range(0, len(self.convs), 2):
            y = h
            for j in (i, i + 1):
                # left padding only: a position sees itself and the items before it
                y = self.convs[j](nn.functional.pad(y.transpose(1, 2), (self.left_pads[j], 0)))
                y = torch.relu(self.norms[j](y.transpose(1, 2)))
            h = h + self.drop(y)
        return h

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """batch × seq × dim: what `output` turns into logits."""
        check_inputs(x, self.vocab_size, self.max_len)
        if self.padding_id is None:
            return self._convolve(self.drop(embed_inputs(x, self.embed)))
        inputs, seen = embedded_real_first(x, self.embed, self.padding_id)
        # the padding moved behind the real items is never read by them (causal)
        h = self._convolve(self.drop(inputs))
        return back_in_place(h, seen)


def nextitnet(num_items: int, max_len: int = 200, dim: int = 64, blocks: int = 2,
              dropout: float = 0.2) -> CausalCNN:
    """A NextItNet-style CNN over items 1..num_items, PADDING_ID (0) padding (vocabulary
    num_items + 1)."""
    return CausalCNN(num_items + 1, max_len, dim, blocks, dropout=dropout, padding_id=PADDING_ID)
