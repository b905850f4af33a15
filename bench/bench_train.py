"""Training step time and peak memory of the tokenizer and the prior at 128³ and 256³.

Each case runs in its own process (so peak RSS is that case's alone) on random inputs of the
exact training shapes of the shipped presets (``cpmae/configs``): the tokenizer on whole 128³
volumes at 128 and on 128³ crops at 256; the prior on 32³ token pairs. One warm-up step, then
the mean of ``--steps`` timed optimizer steps (forward, backward, clip, Adam).

    python bench/bench_train.py [--steps 3] [--cases tok128,tok256,prior128,prior256] [--device cpu]
                                [--precision fp32|bf16] [--batch N] [--crop N] [--token-crop N] [--json OUT]

The load average is printed too: on a shared machine it explains slow numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

CASES = ("tok128", "tok256", "prior128", "prior256")


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_case(case: str, steps: int, device: str, precision: str, batch: int, crop: int = -1,
             token_crop: int = 0) -> dict:
    import torch

    from cpmae.train.config import resolve_config
    from cpmae.train.loop import lr_at, peak_rss_mb
    from cpmae.train.losses import reconstruction_loss

    task = "tokenizer" if case.startswith("tok") else "prior"
    res = int(case[-3:])
    overrides = {"resolution": res, "batch_size": batch}
    if crop >= 0:
        overrides["crop"] = crop
    cfg = resolve_config(task, overrides)
    torch.manual_seed(0)
    dev = torch.device(device)
    if task == "tokenizer":
        from cpmae.models import Tokenizer, TokenizerConfig

        model = Tokenizer(TokenizerConfig.from_dict(dict(cfg.model, in_size=res))).to(dev)
        side = cfg.crop or res
        x = torch.rand(batch, 1, side, side, side, device=dev)

        def loss_fn():
            recon, _, _ = model(x)
            return reconstruction_loss(recon, x, cfg.ssim_weight)
        shape = f"{batch}x1x{side}^3"
    else:
        from cpmae.models import PriorConfig, TokenPrior
        from cpmae.noising import prior_loss, renoise

        model = TokenPrior(PriorConfig.from_dict(cfg.model)).to(dev)
        t_side = token_crop or model.cfg.token_size
        target = torch.randint(0, model.codebook_size, (batch, t_side, t_side, t_side), device=dev)
        brain = torch.randint(0, model.codebook_size, target.shape, device=dev)
        t = torch.rand(batch, device=dev)
        noisy, replaced = renoise(target, t, model.codebook_size)

        def loss_fn():
            return prior_loss(model(noisy, brain, t), target, replaced)
        shape = f"{batch}x{t_side}^3 tokens"
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    times = []
    for i in range(steps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(i, cfg)
        with autocast:
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    step = sum(times) / len(times)
    out = {"case": case, "input": shape, "parameters": sum(p.numel() for p in model.parameters()),
           "step_s": round(step, 3), "samples_per_s": round(batch / step, 3),
           "peak_rss_mb": round(peak_rss_mb(), 0), "precision": precision, "device": device}
    if dev.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--crop", type=int, default=-1, help="tokenizer crop side (default: the preset's)")
    ap.add_argument("--token-crop", type=int, default=0, help="prior token window side (default: whole grid)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one, args.steps, args.device, args.precision, args.batch, args.crop,
                                  args.token_crop)))
        return 0
    info = machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items())
          + f", load average {os.getloadavg()[0]:.1f}", flush=True)
    results = []
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--one", case, "--steps", str(args.steps), "--device", args.device,
               "--precision", args.precision, "--batch", str(args.batch), "--crop", str(args.crop),
               "--token-crop", str(args.token_crop)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{case}: failed\n{proc.stderr[-2000:]}", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{r['case']:9s} {r['input']:18s} params={r['parameters']:>9,d}  step={r['step_s']:7.3f} s  "
              f"samples/s={r['samples_per_s']:6.3f}  peak RSS={r['peak_rss_mb']:6.0f} MB"
              + (f"  peak GPU={r['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in r else ""), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": info, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
