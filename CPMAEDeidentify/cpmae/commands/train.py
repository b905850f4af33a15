"""``cpmae train tokenizer|prior``: train one network of CP-MAE into a run folder.

Settings: shipped preset for the task and grid < ``--config FILE`` < flags (< ``--set k=v``).
The merged config is saved in the run folder and next to every checkpoint. ``--resume``
continues the run exactly from its latest checkpoint with its saved config; only run-control
settings (steps, budget, device, logging intervals, threads) may be changed then.
Multi-GPU / multi-node: launch the same command with ``torchrun`` (DDP, see docs/training.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from cpmae.device import DEVICE_HELP
from cpmae.geometry import describe_grids

# Flags that may change when a run is resumed (they do not alter what the model sees).
RUN_CONTROL = ("steps", "max_minutes", "device", "log_every", "val_every", "checkpoint_every",
               "keep_checkpoints", "threads")

FLAGS = [  # (flag, config key, type, help)
    ("--resolution", "resolution", int, "model grid: " + describe_grids()),
    ("--steps", "steps", int, "optimizer steps in total"),
    ("--batch-size", "batch_size", int, "global batch (split over DDP processes)"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--warmup-steps", "warmup_steps", int, "linear warm-up steps"),
    ("--seed", "seed", int, "seed of initial weights, data order, crops and noise"),
    ("--data", "data", str, "'cohort' (generated subjects) or a folder from `cpmae prepare` / `cpmae encode`"),
    ("--cohort-size", "cohort_size", int, "number of training subjects"),
    ("--val-subjects", "val_subjects", int, "held-out subjects for validation"),
    ("--crop", "crop", int, "tokenizer training crop side on the model grid (0 = whole volume)"),
    ("--max-minutes", "max_minutes", float, "wall-time budget; stops cleanly with a checkpoint"),
    ("--val-every", "val_every", int, "validate every N steps (0 = never)"),
    ("--checkpoint-every", "checkpoint_every", int, "checkpoint every N steps"),
    ("--log-every", "log_every", int, "write metrics every N steps"),
    ("--device", "device", str, DEVICE_HELP),
    ("--precision", "precision", str, "fp32 | bf16 (autocast) | auto (bf16 where the GPU or CPU has it: "
     "AVX512-BF16/AMX)"),
    ("--threads", "threads", int, "torch CPU threads (0 = default)"),
]
SWITCHES = [
    ("--compile", "compile", "torch.compile the model (slow start, faster steps on GPU)"),
    ("--activation-checkpointing", "activation_checkpointing", "recompute residual blocks in backward to save memory"),
    ("--channels-last", "channels_last", "channels-last 3-D memory format"),
]


def register(sub) -> None:
    p = sub.add_parser("train", help="train a tokenizer or the token prior (resumable, DDP via torchrun)")
    tsub = p.add_subparsers(dest="task", metavar="TASK", required=True)
    for task in ("tokenizer", "prior"):
        t = tsub.add_parser(task, help=("a 3-D FSQ tokenizer of the brain or non-brain part" if task == "tokenizer"
                                         else "the conditional token prior (needs trained tokenizers)"),
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        t.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, metrics, config)")
        t.add_argument("--config", type=Path, help="YAML config file")
        t.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
        t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key (YAML value), e.g. --set model.channels=[16,32]")
        t.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto")
        if task == "tokenizer":
            t.add_argument("--part", choices=("brain", "nonbrain"), help="which part of the head")
        else:
            t.add_argument("--brain-tokenizer", dest="brain_tokenizer", help="run folder of the brain tokenizer")
            t.add_argument("--nonbrain-tokenizer", dest="nonbrain_tokenizer", help="run folder of the non-brain tokenizer")
        for flag, key, typ, hlp in FLAGS:
            t.add_argument(flag, dest=key, type=typ, default=None, help=hlp)
        for flag, key, hlp in SWITCHES:
            t.add_argument(flag, dest=key, action="store_true", default=None, help=hlp)
        t.set_defaults(func=run)


def parse_sets(items) -> dict:
    from cpmae.errors import InputError

    out: dict = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        value = yaml.safe_load(value)
        if key.startswith("model."):
            out.setdefault("model", {})[key[len("model."):]] = value
        else:
            out[key] = value
    return out


def flag_overrides(args) -> dict:
    keys = [k for _, k, _, _ in FLAGS] + [k for _, k, _ in SWITCHES] + ["part", "brain_tokenizer", "nonbrain_tokenizer"]
    out = {k: getattr(args, k, None) for k in keys}
    out.update(parse_sets(args.set))
    return {k: v for k, v in out.items() if v is not None}


def resolve(args):
    """The run's config: a fresh merge, or (``--resume``) the saved one plus run-control flags."""
    from cpmae.errors import InputError
    from cpmae.train.config import TrainConfig, read_yaml, resolve_config

    overrides = flag_overrides(args)
    saved = args.out / "config.yaml"
    if args.resume and saved.is_file():
        cfg = read_yaml(saved)
        if cfg.get("task") != args.task:
            raise InputError(f"this run trains a {cfg.get('task')}, not a {args.task}", path=args.out)
        changed = sorted(k for k, v in overrides.items() if k not in RUN_CONTROL and cfg.get(k) != v)
        if changed:
            raise InputError(f"cannot change {', '.join(changed)} when resuming (only {', '.join(RUN_CONTROL)})",
                             path=args.out)
        cfg.update({k: v for k, v in overrides.items() if k in RUN_CONTROL})
        return TrainConfig.from_dict(cfg, path=saved)
    if not args.resume and (args.out / "checkpoints").is_dir() and any((args.out / "checkpoints").iterdir()):
        from cpmae.errors import OutputError

        raise OutputError("run folder already has checkpoints: pass --resume to continue it, or choose "
                          "another --out", path=args.out)
    return resolve_config(args.task, overrides, args.config)


def run(args) -> int:
    from cpmae.progress import Reporter
    from cpmae.train.distributed import from_env
    from cpmae.train.loop import train

    cfg = resolve(args)
    info = from_env()
    reporter = Reporter(args.progress if info.main else "none")
    summary = train(cfg, args.out, resume=args.resume, reporter=reporter)
    if info.main:
        reporter.result(**{k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        if reporter.mode != "json":
            print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in summary.items()}))
    return 0
