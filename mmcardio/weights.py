"""Safetensors weights into a built model, every misfit named before a tensor is read.

`check_weights_fit` compares a file's header (names and shapes) with a model's state, which may
live on the meta device, so a config that does not fit its weights is refused before any
memory is spent on it; `load_weights` checks, then loads. `refuse_pickled_code` guards the
loads of foreign pickled checkpoints (SAM .pth, a text model's or LM's pytorch_model.bin).
"""
from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model
from torch import nn

from mmcardio.errors import ConfigError


def load_weights(model: nn.Module, file: str | Path, *, fits: str, field: str | None = None,
                 allow_missing: frozenset[str] = frozenset(),
                 allow_unexpected: frozenset[str] = frozenset(),
                 device: str | torch.device = "cpu") -> set[str]:
    """Load a safetensors file into a built model once `check_weights_fit` passes; returns the
    allowed names that were missing from the file or unexpected in it."""
    allowed = check_weights_fit(model, file, fits=fits, field=field, allow_missing=allow_missing,
                                allow_unexpected=allow_unexpected)
    try:
        load_model(model, str(file), strict=False, device=str(device))
    except (RuntimeError, OSError, SafetensorError) as err:  # a file damaged past its header
        raise ConfigError(f"weights cannot be read: {err}", file, field) from None
    return allowed


def check_weights_fit(model: nn.Module, file: str | Path, *, fits: str, field: str | None = None,
                      allow_missing: frozenset[str] = frozenset(),
                      allow_unexpected: frozenset[str] = frozenset()) -> set[str]:
    """Compare a safetensors file's header (names and shapes; no tensor is read) with the
    state of `model`, which may live on the meta device. Returns the allowed misfits; any
    other raises a ConfigError naming `file`, `field` and the misfits ("weights do not fit
    {fits}: ..."). Tied parameters (one tensor, several names) need one of their names."""
    try:
        with safe_open(str(file), framework="pt") as fh:
            names = fh.keys()  # safe_open is not iterable
            stored = {name: list(fh.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"not a readable safetensors file ({err})", file, field) from None
    state = model.state_dict(keep_vars=True)  # tied names hold the same Parameter object
    tied: dict[int, list[str]] = {}
    for name, tensor in state.items():
        tied.setdefault(id(tensor), []).append(name)
    reshaped = [f"{name} {stored[name]} (expected {list(tensor.shape)})" for name, tensor in state.items()
                if name in stored and stored[name] != list(tensor.shape)]
    missing = {names[0] for names in tied.values() if not any(n in stored for n in names)}
    unexpected = set(stored) - set(state)
    wrong_missing, wrong_unexpected = sorted(missing - allow_missing), sorted(unexpected - allow_unexpected)
    if reshaped or wrong_missing or wrong_unexpected:
        raise ConfigError(f"weights do not fit {fits}: other shapes {_few_names(reshaped)}, missing "
                          f"{_few_names(wrong_missing)}, unexpected {_few_names(wrong_unexpected)}",
                          file, field)
    return missing | unexpected


def _few_names(names: list[str], k: int = 5) -> str:
    """The first `k` names and how many more, for error messages."""
    return f"{names[:k]}" + (f" and {len(names) - k} more" if len(names) > k else "")


@contextlib.contextmanager
def refuse_pickled_code(source: str | Path, field: str | None = None) -> Iterator[None]:
    """Name the file when a pickled checkpoint asks for more than tensors.

    torch (`weights_only=True`, which transformers and peft also use) refuses such a file
    before any of its code runs, but its error suggests loading it unsafely instead."""
    try:
        yield
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        raise ConfigError("refused: the checkpoint holds more than tensors and unpickling it would run "
                          f"code (only tensors are unpickled; convert it to safetensors): {reason}",
                          source, field) from None
