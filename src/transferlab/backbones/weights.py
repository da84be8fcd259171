"""Weight files checked before any work: a truncated or corrupt safetensors file, or a pickle that holds more than
tensors, is a user error naming the file, never a traceback halfway through a run."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import torch

from transferlab.errors import UserError

PICKLED = "pytorch_model.bin"


def check_weights(model_dir: Path) -> None:
    """Refuse the weights of a model directory that cannot be read completely and safely."""
    files = sorted(model_dir.glob("*.safetensors"))
    for path in files:
        _check_safetensors(path)
    if not files and (model_dir / PICKLED).is_file():
        _check_pickle(model_dir / PICKLED)


def _check_safetensors(path: Path) -> None:
    """The header must parse and the file must hold every byte the header promises (a cut-off copy does not)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length)) if 8 + length <= size else None
        ends = [info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"]
    except (struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError):
        header, ends = None, []
    if header is None:
        raise UserError(f"'{path}' is not a readable safetensors file ({size} bytes, no valid header): it is "
                        "corrupt or was cut off while being written or copied.",
                        "Copy the model directory again from where it came from (or train the run again).")
    needed = 8 + length + max(ends, default=0)
    if size < needed:
        raise UserError(f"'{path}' is truncated: its header describes {needed:,} bytes of tensors but the file has "
                        f"{size:,} (it was cut off while being written or copied).",
                        "Copy the model directory again from where it came from (or train the run again).")


def _check_pickle(path: Path) -> None:
    """A PyTorch pickle is read with weights_only=True: tensors only, no code. Anything else is refused."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise UserError(f"'{path}' is a pickle that holds more than tensors (or is corrupt), and transferlab never "
                        "unpickles arbitrary objects: loading them could run any code on this machine.",
                        "Use a model saved as safetensors (`save_pretrained` writes model.safetensors); convert "
                        "this file yourself only if you trust where it came from.") from err
