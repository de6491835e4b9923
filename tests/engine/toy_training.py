"""A tiny regression task for trainer tests; also runnable as a script for kill / resume tests.

    python tests/engine/toy_training.py RUN_DIR --steps 30 [--resume] [--sleep 0.05] [--nan-at 3,4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch import nn

from vimpac.engine.trainer import Trainer, TrainConfig, derive_seed

IN_DIM, OUT_DIM = 6, 3


class ToyModel(nn.Module):
    def __init__(self, dropout: float = 0.2):
        super().__init__()
        self.hidden = nn.Linear(IN_DIM, 16)
        self.norm = nn.LayerNorm(16)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(16, OUT_DIM)

    def forward(self, x):
        return self.out(self.dropout(torch.relu(self.norm(self.hidden(x)))))


class ToyTask:
    """y = x @ W_true; batches drawn from a generator seeded by (seed, step, micro, rank)."""

    def __init__(self, batch_size: int, seed: int = 0, nan_steps: tuple[int, ...] = (), sleep: float = 0.0,
                 simulate_ranks: int = 0):
        self.batch_size = batch_size
        self.seed = seed
        self.nan_steps = set(nan_steps)
        self.sleep = sleep
        self.simulate_ranks = simulate_ranks  # >0: one process takes the data of that many ranks
        self.w_true = torch.randn(IN_DIM, OUT_DIM, generator=torch.Generator().manual_seed(123))

    def batch(self, step, micro_step, dist):
        # Each rank's part of the global batch is the same whatever the world size, so one
        # process with the whole global batch sees exactly the data of N processes.
        ranks = range(self.simulate_ranks) if self.simulate_ranks else [dist.rank]
        x = torch.cat([torch.randn(self.batch_size, IN_DIM,
                                   generator=torch.Generator().manual_seed(derive_seed(self.seed, step, micro_step, r)))
                       for r in ranks])
        return step, x, x @ self.w_true

    def loss(self, model, batch):
        step, x, y = batch
        if self.sleep:
            time.sleep(self.sleep)
        loss = nn.functional.mse_loss(model(x), y)
        if step in self.nan_steps:
            loss = loss * float("nan")
        return loss, {"count/samples": x.shape[0]}

    def validate(self, model, dist):
        g = torch.Generator().manual_seed(999)
        x = torch.randn(64, IN_DIM, generator=g)
        return {"mse": float(nn.functional.mse_loss(model(x), x @ self.w_true))}


def make_trainer(run_dir, steps=30, nan_steps=(), sleep=0.0, **overrides):
    torch.manual_seed(0)
    settings = dict(total_steps=steps, batch_size=8, lr=3e-2, warmup_ratio=0.1, log_every=1,
                    checkpoint_every=5, deterministic=True, progress=False)
    cfg = TrainConfig(**{**settings, **overrides})
    return Trainer(ToyModel(), ToyTask(cfg.batch_size, nan_steps=nan_steps, sleep=sleep), cfg, run_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    trainer = make_trainer(args.run_dir, steps=args.steps, sleep=args.sleep)
    if args.resume:
        trainer.resume()
    result = trainer.fit()
    # One write() of the whole line: two ranks print into one file under torchrun, and print()'s separate writes
    # of "interrupted", " " and "6" interleave (unbuffered under PYTHONUNBUFFERED) into "interrupted interrupted6".
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), f"{result.status} {result.step}\n".encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
