"""DDP on CPU: ``torchrun --nproc_per_node=2`` (gloo) trains like one process with the same global batch.

This file is also the worker that torchrun starts: each rank runs the real training loop for
one step on the tiny phantom dataset and dumps its own parameters, so the test can check that
both ranks hold identical weights and that they equal a single-process run.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

STEPS = 1
GLOBAL_BATCH = 2
# Adam turns a gradient of ~1e-8 (float noise, e.g. on zero-initialised biases) into a full
# lr-sized step when eps is 1e-8, so summation-order noise between 1 and 2 processes would show
# as O(lr) differences; a larger eps compares the optimisation itself.
SETTINGS = dict(steps=STEPS, batch_size=GLOBAL_BATCH, checkpoint_every=0, warmup_steps=0, adam_eps=1e-4)


def _run_worker(data: str, run_dir: str, dump_dir: str) -> None:
    """One torchrun rank: train, then dump this rank's parameters (before the group is torn down)."""
    from test_train import tiny_tokenizer_config

    from cpmae.train.checkpoint import model_state
    from cpmae.train.loop import train

    cfg = tiny_tokenizer_config(Path(data), **SETTINGS)
    rank = int(os.environ["RANK"])
    captured = {}
    from torch.nn.parallel import DistributedDataParallel

    real_init = DistributedDataParallel.__init__

    def ddp_init(self, module, *a, **k):  # keep a handle on this rank's bare model
        captured["module"] = module
        real_init(self, module, *a, **k)

    DistributedDataParallel.__init__ = ddp_init
    train(cfg, Path(run_dir))
    save_file(model_state(captured["module"]), str(Path(dump_dir) / f"rank{rank}.safetensors"))


def test_ddp_two_processes_match_single_process(tmp_path):
    from test_train import tiny_tokenizer_config, write_prepared

    from cpmae.train.checkpoint import latest_checkpoint
    from cpmae.train.loop import train

    data = write_prepared(tmp_path / "prepared")
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           __file__, str(data), str(tmp_path / "ddp"), str(dumps)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (load_file(str(dumps / f"rank{r}.safetensors")) for r in range(2))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks differ in {k}"

    cfg = tiny_tokenizer_config(data, **SETTINGS)
    train(cfg, tmp_path / "single")
    single = load_file(str(latest_checkpoint(tmp_path / "single") / "model.safetensors"))
    torch.manual_seed(cfg.seed)
    from cpmae.train.tasks import TokenizerTask

    init = TokenizerTask(cfg).build().state_dict()
    moved = 0
    for k, v in single.items():
        assert torch.allclose(r0[k], v, rtol=1e-5, atol=1e-6), f"DDP and single-process differ in {k}"
        moved += int(not torch.equal(v, init[k]))
    assert moved > 0  # the step changed the weights, so the comparison means something
    # the DDP run's own checkpoint (written by rank 0) holds the same weights
    ddp_ckpt = load_file(str(latest_checkpoint(tmp_path / "ddp") / "model.safetensors"))
    for k in r0:
        assert torch.equal(ddp_ckpt[k], r0[k])


if __name__ == "__main__":
    _run_worker(*sys.argv[1:4])
