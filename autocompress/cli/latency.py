"""The `autocompress latency` command group: calibrate a device profile here, list profiles, predict a plan.

Mounted by `autocompress.cli.build_parser`.
"""

from __future__ import annotations

import argparse
from typing import Any

from autocompress.cli.common import add_task_args, console, step
from autocompress.errors import UserError


def _cmd_latency_calibrate(args: argparse.Namespace) -> int:
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from autocompress.evaluators.latency._base import Workload, check_mode
    from autocompress.loading import load_model, model_task

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {args.device}: no CUDA GPU is visible here (torch.cuda.is_available() is "
                            "False); run the calibration on the GPU machine, or use --device cpu")
    from autocompress.evaluators.latency.calibrate import calibrate, merge_profiles, save_profile

    old = None
    if args.update:  # refused before minutes of measuring, not after
        from autocompress.hardware.profile import load_profile

        old = load_profile(args.update)
        kind = "gpu" if args.device.startswith("cuda") else "cpu"
        if old.calibration is None or old.kind != kind:
            raise UserError(f"--update {args.update}: not a profile calibrated on a {kind} (a spec-sheet profile, or "
                            "another kind of device); calibrate into a new file (drop --update)")
    check_mode(args.mode, model_task(args.model, args.task, args.trust_remote_code), args.model, "--mode")
    with step(f"loading {args.model}"):
        loaded = load_model(args.model, task=args.task, trust_remote_code=args.trust_remote_code)
    err = console(stderr=True)
    start = time.perf_counter()
    with Progress(TextColumn("{task.description:<36}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err, disable=not err.is_terminal) as bar:
        task = bar.add_task("calibrating", total=None)

        def progress(advance: int, total: int, description: str) -> None:
            bar.update(task, advance=advance, total=total, description=description)

        profile = calibrate(loaded.model, loaded.info, device=args.device,
                            workload=Workload(batch=args.batch, seq_len=args.seq_len, mode=args.mode),
                            model_name=args.model, progress=progress, name=args.name)
    elapsed = time.perf_counter() - start
    if old is not None:
        profile = merge_profiles(old, profile)
    path = save_profile(profile, args.out)
    out = console()
    layouts = sorted({(e.format, e.group or 0) for e in profile.table})
    counts = ", ".join(f"{f}{f' g{g}' if g else ''} {sum((e.format, e.group or 0) == (f, g) for e in profile.table)}"
                       for f, g in layouts)
    rest = ", ".join(f"{mode} {w.rest_scale:.4g}" for mode, w in profile.calibration.workloads.items())
    peaks = ", ".join(f"{k} {v * 1e3:.4g} G{'OP' if k.startswith('int') else 'FLOP'}/s"
                      for k, v in profile.peak_tflops.items())
    out.print(f"profile {profile.name}: {profile.description}")
    out.print(f"  peaks: {peaks}")
    out.print(f"  bandwidth: {profile.bandwidth_gbs:.4g} GB/s; overhead: {profile.overhead_us:.4g} us/op; "
              f"cache: {profile.cache_mb:g} MB")
    out.print(f"  table: {len(profile.table)} GEMMs ({counts}); rest_scale: {rest}")
    for mode, w in profile.calibration.workloads.items():
        if w.call_overhead_ms:
            costs = ", ".join(f"{f} {ms * 1e3:+.4g} us" for f, ms in w.call_overhead_ms.items())
            out.print(f"  in-model cost per call ({mode}): {costs}")
    out.print(f"wrote {path} (calibrated in {elapsed:.0f} s); use it with --profile {path}")
    return 0


def _cmd_latency_profiles(args: argparse.Namespace) -> int:
    from rich.table import Table

    from autocompress.hardware import list_profiles, load_profile

    t = Table(title="device profiles (autocompress/hardware/*.yaml)")
    for col in ("name", "kind", "dtype", "peak TFLOP/s", "GB/s", "overhead us", "fast formats", "calibrated"):
        t.add_column(col, justify="left" if col in ("name", "kind", "dtype", "fast formats") else "right")
    for name in list_profiles():
        p = load_profile(name)
        fast = ", ".join(["dense", *(f for f, k in p.kernels.items() if k.fast and f != "dense")])
        t.add_row(name, p.kind, p.dtype, f"{p.peak(p.dtype):g}", f"{p.bandwidth_gbs:g}", f"{p.overhead_us:g}", fast,
                  "table" if p.table else ("yes" if p.calibration else "spec sheet"))
    console().print(t)
    return 0


def _cmd_latency_predict(args: argparse.Namespace) -> int:
    from rich.table import Table

    from autocompress.evaluators.latency import table as _table  # noqa: F401  (registers "table")
    from autocompress.evaluators.latency._base import LATENCY_MODELS, Workload, check_mode
    from autocompress.hardware.profile import load_profile
    from autocompress.loading import load_model, model_task
    from autocompress.plan import CompressionPlan
    from autocompress.validation import validate_plan

    profile = load_profile(args.profile)
    workload = Workload(batch=args.batch, seq_len=args.seq_len, mode=args.mode)
    is_config = args.plan.lower().endswith((".yaml", ".yml"))
    if is_config:
        from autocompress.config import SearchConfig

        config = SearchConfig.from_yaml(args.plan)
        model_name, task = args.model or config.model.name, config.model.task
        trust_remote_code = config.model.trust_remote_code
    else:
        if not args.model:
            raise UserError("a plan JSON needs the model it is for: add --model MODEL "
                            "(a config YAML names its own)")
        model_name, task, trust_remote_code = args.model, args.task, False
        plan = CompressionPlan.load(args.plan)
    check_mode(workload.mode, model_task(model_name, task, trust_remote_code), model_name, "--mode")
    name = args.latency_model or ("table" if profile.table else "roofline")
    latency = LATENCY_MODELS.get(name)
    if latency.needs_model:
        raise UserError(f"--latency-model {name} times the real model; use roofline or table here")
    model = latency(profile)
    with step(f"loading {model_name}"):
        info = load_model(model_name, task=task, trust_remote_code=trust_remote_code).info
    where = (f"{name} on {profile.name}, batch {workload.batch}, seq_len {workload.seq_len}, {workload.mode}")
    out = console()
    if is_config:
        from autocompress.spaces import ConfigSpace

        space = ConfigSpace(config.space, info, config.target_format)
        plans = {"dense (no compression)": CompressionPlan({}), **space.uniform_plans()}
        totals = {label: model.predict(p, info, workload).total_ms for label, p in plans.items()}
        dense = totals["dense (no compression)"]
        t = Table(title=f"{model_name}: predicted latency ({where})")
        for col in ("plan", "ms", "speedup"):
            t.add_column(col, justify="left" if col == "plan" else "right")
        for label, ms in totals.items():
            t.add_row(label, f"{ms:.4g}", f"{dense / ms:.2f}x")
        out.print(t)
        return 0
    validate_plan(plan, info)
    report = model.predict(plan, info, workload)
    t = Table(title=f"{args.plan} on {model_name}: predicted latency ({where})")
    for col in ("layer", "ms", "bottleneck"):
        t.add_column(col, justify="right" if col == "ms" else "left")
    for layer, ms, bottleneck in report.per_layer():
        t.add_row(layer, f"{ms:.4g}", bottleneck)
    out.print(t)
    out.print(f"total: {report.total_ms:.4g} ms")
    return 0


def add_latency_commands(sub: Any) -> None:
    """Mount `latency calibrate | profiles | predict` on the top-level subparsers `sub`."""
    lat = sub.add_parser("latency", help="device latency: calibrate a profile on this machine, predict a plan")
    lat_sub = lat.add_subparsers(dest="latency_command", required=True)
    p = lat_sub.add_parser("calibrate", help="measure a device profile (GEMM table, peaks, bandwidth) here")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to measure (default cpu)")
    p.add_argument("--model", required=True, help="the model whose GEMM shapes to measure, e.g. all-MiniLM-L6-v2")
    p.add_argument("--out", required=True, help="the profile YAML to write")
    p.add_argument("--name", help="the profile's name (default cpu-local or gpu-local)")
    p.add_argument("--batch", type=int, default=1, help="sequences per call (default 1)")
    p.add_argument("--seq-len", type=int, default=128,
                   help="tokens per sequence (prefill), or KV-cache positions a decode step attends over (default 128)")
    p.add_argument("--mode", choices=("prefill", "decode"), default="prefill",
                   help="prefill: a forward over seq_len tokens; decode: one new token per sequence (causal LMs)")
    p.add_argument("--update", metavar="PROFILE.yaml",
                   help="add this calibration to a profile calibrated here before (e.g. decode to a prefill one): "
                        "its other workloads and GEMMs are kept; written to --out")
    add_task_args(p)
    p.set_defaults(func=_cmd_latency_calibrate)
    p = lat_sub.add_parser("profiles", help="list the shipped device profiles")
    p.set_defaults(func=_cmd_latency_profiles)
    p = lat_sub.add_parser("predict", help="predict a plan's latency (per layer) or a config's baselines")
    p.add_argument("plan", help="a CompressionPlan JSON (with --model), or a search config YAML")
    p.add_argument("--profile", required=True, help="a shipped device profile name or a profile YAML path")
    p.add_argument("--model", help="the model the plan is for (a config YAML names its own)")
    add_task_args(p, trust_remote_code=False)
    p.add_argument("--latency-model", choices=("roofline", "table"),
                   help="default: table when the profile has a measured table, else roofline")
    p.add_argument("--batch", type=int, default=1, help="sequences per call (default 1)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--mode", choices=("prefill", "decode"), default="prefill")
    p.set_defaults(func=_cmd_latency_predict)
