"""What a model directory's PyTorch `.bin` weights are, found out without running any of their pickle.

transformers loads `pytorch_model*.bin` only when a directory has no `*.safetensors` file, and autocompress
lets it do so only through `torch.load(weights_only=True)`. `check_bin_files(directory, spec)` reads those
files first, the same way, so that a bad one is refused in one line that says what the file is:
  - neither a torch zip checkpoint (it starts with `PK\\x03\\x04`) nor a legacy pickle (`\\x80` and a protocol
    number): "is not a PyTorch checkpoint (it starts with bytes ...)";
  - a checkpoint whose pickle names anything other than tensors and containers (`os.system`, a class):
    refused by the weights-only unpickler before that object is built, so nothing of it runs;
  - a checkpoint torch cannot read (truncated, corrupt).
A zip checkpoint is memory-mapped (`mmap=True`): its tensors are not read; a legacy pickle is read to the CPU.
A clean `.bin` of tensors passes, as transformers loads it.
"""

from __future__ import annotations

import glob
import os
import re

from autocompress.errors import UserError

ZIP_MAGIC = b"PK\x03\x04"


def bin_files(directory: str) -> list[str]:
    """The `pytorch_model*.bin` files transformers would load from `directory` (none beside safetensors)."""
    if glob.glob(os.path.join(directory, "*.safetensors")):
        return []
    return sorted(glob.glob(os.path.join(directory, "pytorch_model*.bin")))


def check_bin_files(directory: str, spec: str) -> None:
    """`check_torch_bin` on every file of `bin_files(directory)`."""
    for file in bin_files(directory):
        check_torch_bin(file, spec)


def checkpoint_kind(head: bytes) -> str | None:
    """'a torch zip checkpoint', 'a legacy pickle', or None, from a file's first bytes."""
    if head.startswith(ZIP_MAGIC):
        return "a torch zip checkpoint"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle's PROTO opcode
        return "a legacy pickle"
    return None


def check_torch_bin(path: str, spec: str) -> None:
    """Load `path` with `torch.load(weights_only=True)` (memory-mapped when it is a zip checkpoint);
    `UserError` naming the file and what it is when it is no checkpoint, holds pickled objects other than
    tensors, or cannot be read."""
    import torch

    name = os.path.basename(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    kind = checkpoint_kind(head)
    if kind is None:
        shown = " ".join(f"{b:02x}" for b in head[:8]) or "nothing: it is empty"
        raise UserError(f"model {spec!r}: {name} is not a PyTorch checkpoint (it starts with bytes {shown}, neither "
                        "a torch zip checkpoint nor a pickle); re-download or re-save the model")
    zipped = kind == "a torch zip checkpoint"
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as exc:  # UnpicklingError from the weights-only unpickler; RuntimeError, EOFError: corrupt
        text = " ".join(str(exc).split())
        foreign = _foreign_globals(path, zipped) or re.findall(r"GLOBAL ([\w.]+) was not an allowed", text)
        if foreign:
            raise UserError(f"model {spec!r}: {name} is {kind} that holds pickled objects other than tensors; "
                            "autocompress loads weights only with weights_only=True; convert it to safetensors "
                            f"where you trust its source (it names {', '.join(foreign[:3])})") from None
        reason = re.sub(r"^Weights only load failed\. ", "", text)[:200] or type(exc).__name__
        raise UserError(f"model {spec!r}: {name} is {kind} that torch cannot read ({reason}); re-download or "
                        "re-save the model") from None


def _foreign_globals(path: str, zipped: bool) -> list[str]:
    """The `module.name`s a checkpoint's pickle imports that torch's weights-only unpickler does not allow,
    read with `pickletools` (which parses opcodes and runs nothing); [] when none or unreadable."""
    import io
    import pickletools
    import zipfile

    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except Exception:  # a private name of torch's: fall back to what it allows in practice
        allowed = set()
    safe = ("torch.", "collections.OrderedDict", "_codecs.encode")
    found: list[str] = []
    try:
        if zipped:
            with zipfile.ZipFile(path) as zf:
                member = next(n for n in zf.namelist() if n.endswith("data.pkl"))
                streams = io.BytesIO(zf.read(member))
        else:
            streams = open(path, "rb")
        with streams as fh:
            for _ in range(4):  # a legacy file: magic number, protocol, sys info, then the data's pickle
                pushed: list = []
                memo: dict = {}
                for op, arg, _pos in pickletools.genops(fh):
                    if op.name == "GLOBAL":
                        found.append(arg.replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(pushed) >= 2:
                        found.append(f"{pushed[-2]}.{pushed[-1]}")
                    elif op.name == "MEMOIZE":
                        memo[len(memo)] = pushed[-1] if pushed else None
                    elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                        memo[arg] = pushed[-1] if pushed else None
                    elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                        pushed.append(memo.get(arg))
                    elif isinstance(arg, str) or op.name.endswith("UNICODE"):
                        pushed.append(arg)
    except Exception:  # the end of the pickles, or a corrupt one: what was read so far
        pass
    return [g for g in dict.fromkeys(found) if g not in allowed and not g.startswith(safe)]
