"""The training loop shared by the tokenizers and the prior.

Adam(W) with linear warm-up then cosine/linear decay, global-norm gradient clipping, optional
bf16 autocast, torch.compile, activation checkpointing and channels-last 3-D; DDP when
launched by torchrun. The learning rate is a pure function of the step and every sample a pure
function of its index (``data.py``), so a checkpoint needs only weights, optimizer state, RNG
states and the step count to continue exactly.
"""
from __future__ import annotations

import functools
import math
import resource
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from cpmae.errors import Cancelled, InputError, OutputError
from cpmae.progress import NULL, Reporter
from cpmae.train import checkpoint as C
from cpmae.train import distributed as dist_
from cpmae.train.config import TrainConfig
from cpmae.train.data import rank_indices
from cpmae.train.logs import MetricsLog, plot_curves


def lr_at(step: int, cfg: TrainConfig, budget_frac: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then decay.

    ``budget_frac`` (share of the wall-time budget used) lets a time-limited run finish its
    decay when the budget, not the step count, ends it (``budget_schedule``); such a run is
    not step-deterministic, which is why it is off by default.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    frac = min(1.0, max((step - cfg.warmup_steps) / span, budget_frac))
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return floor + (cfg.lr - floor) * (1.0 - frac)
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def cpu_flags() -> set:
    """Instruction-set flags of this CPU (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_supported(device: torch.device, flags: Optional[set] = None) -> bool:
    """Whether bf16 autocast is fast here: CUDA GPUs that report bf16; CPUs with AVX512-BF16 or AMX.
    Without them bf16 convolutions are emulated and slower than fp32 (the CPU changes between
    machines, so this is checked at run time, not assumed)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported(device))


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)


def warm_start(model: torch.nn.Module, cfg: TrainConfig, task) -> None:
    """Load the matching component of bundle ``cfg.init_from`` into a fresh model (same config)."""
    from cpmae.models.build import complete
    from cpmae.weights import component_state

    name = f"{cfg.part}_tokenizer" if cfg.task == "tokenizer" else "prior"
    config, state = component_state(cfg.init_from, name)
    kind = "tokenizer" if cfg.task == "tokenizer" else "prior"
    if complete(kind, config) != complete(kind, task.model_config):
        raise InputError(f"the {name} of {cfg.init_from} has another architecture or size than this run "
                         f"(bundle {config}, run {task.model_config})", path=cfg.init_from)
    C.unwrap(model).load_state_dict(state)


def hardware(device: torch.device) -> str:
    """The machine a run trained on, for checkpoints and bundle manifests."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def enable_activation_checkpointing(model: torch.nn.Module) -> int:
    """Recompute every residual block in the backward pass instead of storing its activations."""
    from torch.utils.checkpoint import checkpoint

    from cpmae.models.layers import ResBlock

    n = 0
    for m in model.modules():
        if isinstance(m, ResBlock):
            m.forward = functools.partial(checkpoint, m.forward, use_reentrant=False)
            n += 1
    return n


def prepare_model(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    return model


def _to_channels_last(batch):
    if isinstance(batch, torch.Tensor) and batch.dim() == 5 and batch.is_floating_point():
        return batch.contiguous(memory_format=torch.channels_last_3d)
    return batch


@contextmanager
def stop_on_sigterm():
    """SIGTERM (a scheduler's time limit, the Slicer panel's cancel, torchrun shutting down) sets
    a flag instead of killing the process, so the loop can checkpoint the step it is on."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag["stop"] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False, reporter: Reporter = NULL,
          task=None, stop_at: Optional[int] = None) -> Dict[str, Any]:
    """Train until ``cfg.steps`` (or the wall-time budget, or ``stop_at`` — a test hook that
    imitates a kill right after checkpoint ``stop_at``). Returns a summary dict."""
    run_dir = Path(run_dir)
    info = dist_.from_env()
    device = dist_.pick_device(cfg.device, info)
    dist_.init(info, device)
    with run_folder_lock(run_dir, info.main), stop_on_sigterm() as sigterm:
        return _train(cfg, run_dir, resume, reporter, task, stop_at, info, device, sigterm)


@contextmanager
def run_folder_lock(run_dir: Path, main: bool = True):
    """One training run per folder: a second one (started by mistake, or a resume while the first
    still runs) would write the same checkpoints and metrics in turn, and each --resume would
    pick up the other's state. The lock dies with its process (``cpmae.locks``), so a killed run
    never blocks its own resume. Only the main rank takes it: DDP ranks share the folder."""
    if not main:
        yield
        return
    from cpmae import locks

    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / ".train.lock", "a+b")
    try:
        try:
            locks.lock(fh)
        except OSError:
            raise OutputError("another training run is writing to this folder; wait for it to stop "
                              "(its checkpoint is kept) or train into another --out", path=run_dir) from None
        yield
    finally:
        fh.close()


def _train(cfg, run_dir, resume, reporter, task, stop_at, info, device, sigterm):
    from cpmae.train.tasks import make_task

    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if info.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(run_dir / "config.yaml")
        dist_.barrier(info)
        task = task or make_task(cfg, str(device))
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every run
        model = prepare_model(task.build(), cfg, device)
        bare = model
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                      eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
        start, elapsed_before = 0, 0.0
        ckpt = C.latest_checkpoint(run_dir) if resume else None
        if ckpt is not None:
            state = C.load_checkpoint(ckpt, bare, optimizer, map_location=str(device))
            start, elapsed_before = int(state["step"]), float(state.get("elapsed_s", 0.0))
            reporter.log(f"resuming from {ckpt} (step {start})")
        elif resume:
            reporter.log(f"no checkpoint in {run_dir}; starting from step 0")
        if ckpt is None and cfg.init_from:
            warm_start(bare, cfg, task)
            reporter.log(f"weights initialised from {cfg.init_from}")
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            model = torch.compile(model)
        log = MetricsLog(run_dir, start) if info.main else None
        bf16 = use_bf16(cfg, device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
        base_state = {"task": cfg.task, "model_config": task.model_config, "data": task.data_description,
                      "global_batch": cfg.batch_size, "world_size": info.world,
                      "cohort_seeds": list(getattr(task, "cohort_seeds", [])), "precision": "bf16" if bf16 else "fp32",
                      "hardware": hardware(device)}

        saved = {"step": start}

        def save(step: int, elapsed: float) -> Path:
            path, saved["step"] = None, step
            if info.main:
                path = C.save_checkpoint(run_dir, step, bare, optimizer, cfg,
                                         dict(base_state, samples_seen=step * cfg.batch_size, elapsed_s=elapsed),
                                         keep=cfg.keep_checkpoints)
            dist_.barrier(info)
            return path

        def validate(step: int) -> Dict[str, float]:
            metrics = {}
            if info.main:
                bare.eval()
                with autocast:
                    metrics = task.validate(bare, device)
                    if getattr(cfg, "val_render", False) and hasattr(task, "render_sample"):
                        try:
                            task.render_sample(bare, device, run_dir / "samples" / f"step-{step:07d}.png")
                        except Exception as exc:  # no OpenGL here: a missing picture must not stop training
                            reporter.log(f"validation render skipped: {exc}")
                bare.train()
                if metrics:
                    log.write({"step": step, **{k: round(v, 6) for k, v in metrics.items()}})
            dist_.barrier(info)
            return metrics

        t_start = time.perf_counter()
        step, last_loss, last_val, stopped_early = start, float("nan"), {}, False
        model.train()
        with reporter.stage(f"train {cfg.task}" + (f" ({cfg.part})" if cfg.task == "tokenizer" else ""),
                            total=max(0, cfg.steps - start)) as bar:
            while step < cfg.steps:
                t0 = time.perf_counter()
                budget_frac = 0.0
                if cfg.budget_schedule and cfg.max_minutes > 0:  # time before a resume counts too
                    budget_frac = (elapsed_before + time.perf_counter() - t_start) / (cfg.max_minutes * 60)
                    budget_frac = dist_.mean(budget_frac, info, device)  # one lr on every rank
                lr = lr_at(step, cfg, budget_frac)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                indices = rank_indices(step, cfg.batch_size, info.rank, info.world)
                micro = max(1, cfg.micro_batch // info.world) if cfg.micro_batch else len(indices)
                optimizer.zero_grad(set_to_none=True)
                loss_sum, extra = 0.0, {}
                for k in range(0, len(indices), micro):  # gradient accumulation: same samples, same mean
                    chunk = indices[k:k + micro]
                    batch = task.batch(chunk, device)
                    if cfg.channels_last:
                        batch = _to_channels_last(batch)
                    with autocast:
                        loss, extra = task.loss(model, batch)
                    if not torch.isfinite(loss):
                        raise InputError(f"training diverged at step {step + 1} (loss {float(loss)}); "
                                         f"lower --lr or check the data", path=run_dir)
                    share = len(chunk) / len(indices)
                    (loss * share if share != 1 else loss).backward()
                    loss_sum += float(loss.detach()) * share
                loss = torch.tensor(loss_sum)
                grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                             if cfg.grad_clip > 0 else torch.tensor(float("nan")))
                optimizer.step()
                step += 1
                dt = time.perf_counter() - t0
                last_loss = dist_.mean(float(loss.detach()), info, device)
                elapsed = elapsed_before + time.perf_counter() - t_start
                if info.main and (step % max(1, cfg.log_every) == 0 or step == cfg.steps):
                    log.write({"step": step, "loss": round(last_loss, 6), "lr": lr,
                               "grad_norm": round(float(grad_norm), 6), "step_time_s": round(dt, 4),
                               "samples_per_s": round(cfg.batch_size / dt, 4), "elapsed_s": round(elapsed, 2),
                               "peak_rss_mb": round(peak_rss_mb(), 1), **extra})
                bar.advance()
                if cfg.val_every and step % cfg.val_every == 0:
                    last_val = validate(step)
                spent = time.perf_counter() - t_start + (elapsed_before if cfg.budget_schedule else 0.0)
                out_of_time = cfg.max_minutes > 0 and spent > cfg.max_minutes * 60
                out_of_time = dist_.any_true(out_of_time, info, device)
                terminated = dist_.any_true(sigterm["stop"], info, device)
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or out_of_time or terminated:
                    save(step, elapsed)
                if terminated:
                    raise Cancelled(f"terminated at step {step}; checkpoint saved, continue with --resume",
                                    path=run_dir)
                if stop_at is not None and step >= stop_at:
                    return {"step": step, "stopped": "stop_at", "loss": last_loss}
                if out_of_time:
                    stopped_early = True
                    reporter.log(f"wall-time budget of {cfg.max_minutes} min reached at step {step}")
                    break
        elapsed = elapsed_before + time.perf_counter() - t_start
        if cfg.val_every and step > start and step % cfg.val_every:
            last_val = validate(step)
        final = save(step, elapsed) if saved["step"] != step or step == 0 else C.latest_checkpoint(run_dir)
        if info.main:
            try:
                plot_curves(run_dir)
            except Exception as exc:  # a missing matplotlib must not lose a finished run
                reporter.log(f"loss curve not drawn: {exc}")
        return {"step": step, "loss": last_loss, "checkpoint": str(final) if final else None,
                "stopped": "budget" if stopped_early else "steps", "elapsed_s": elapsed,
                "peak_rss_mb": peak_rss_mb(), **last_val}
    finally:
        dist_.shutdown(info)
