"""Saving and loading the package's files: written atomically (a crash never leaves half a
file), read without ever running code from them (tensors and plain containers only), and
checked against a SHA-256 digest of their content stored inside them, since torch does not
check the zip's CRCs and flipped bytes inside a tensor would otherwise load silently."""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path

import torch

DIGEST_KEY = "sha256"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def content_digest(obj) -> str:
    """SHA-256 over the structure and values of `obj`: dicts (in key order), lists, tuples,
    tensors (dtype, shape and bytes) and plain values (their repr)."""
    h = hashlib.sha256()

    def walk(value, path: str):
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{path}:tensor:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            h.update(f"{path}:dict:{len(value)};".encode())
            for key in sorted(value, key=repr):
                walk(value[key], f"{path}/{key!r}")
        elif isinstance(value, (list, tuple)):
            h.update(f"{path}:{type(value).__name__}:{len(value)};".encode())
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")
        else:
            h.update(f"{path}={value!r};".encode())

    walk(obj, "")
    return h.hexdigest()


def atomic_save(obj: dict, path) -> None:
    """torch.save of `obj` (a dict) plus its content digest, to a temporary file in the same
    folder, then rename: a crash never leaves a half-written file under `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, "wb") as f:
            torch.save({**obj, DIGEST_KEY: content_digest(obj)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def safe_load(path, what: str) -> dict:
    """torch.load(weights_only=True): tensors and plain containers only, never code; the
    content must match the digest written beside it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as error:  # torch's advice here is to load it unsafely: no
        if "Weights only load failed" in str(error):
            raise ValueError(f"{path} is not a readable {what} file: it holds objects other "
                             f"than tensors and plain containers, which could run code when "
                             f"loaded; it is not trusted data and was not loaded") from None
        raise ValueError(f"{path} is not a readable {what} file (damaged: "
                         f"{str(error).strip()[:160]})") from None
    except Exception as error:  # corrupted, truncated, empty or foreign files
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise ValueError(f"{path} is not a readable {what} file (not trusted data, or damaged: "
                         f"{type(error).__name__}: {lines[0][:160]})") from None
    if not isinstance(state, dict) or DIGEST_KEY not in state:
        raise ValueError(f"{path} is not a {what} file written by farzi_fast (no integrity "
                         f"digest)")
    stored = state.pop(DIGEST_KEY)
    if stored != content_digest(state):
        raise ValueError(f"{path} is damaged: its content does not match the digest stored "
                         f"in it")
    return state


def atomic_write_text(path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_jsonl(path) -> list[dict]:
    """The entries of a JSON-lines file. A torn last line (its writer was killed while
    writing it) is dropped; a broken line before it means the file is damaged."""
    import json

    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    entries = []
    for number, line in enumerate(lines, start=1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number} is not a JSON line; the file is damaged "
                             f"(move it away to resume without it)") from None
    return entries
