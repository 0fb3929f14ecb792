"""One training loop for every stage: AdamW, warm-up + cosine, DDP, checkpoints, metrics log.

A stage is an `nn.Module` whose forward takes one batch and returns (loss, metrics) plus a
sampler that draws batches from a `torch.Generator`. The loop checkpoints model, optimizer,
step and every rank's random state (tensors only, read back with weights_only=True) into
`<work>/<stage>/checkpoint.pt`, so a stopped run resumes exactly where it was, and appends
one JSON line per logging interval to `<work>/<stage>/metrics.jsonl`.
Under torchrun each process trains on its own shard of the data; gradients are averaged by
torch DistributedDataParallel (gloo on CPU).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

Batch = tuple[torch.Tensor, ...]
Sampler = Callable[[torch.Generator], Batch]


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            tdist.barrier()

    def mean(self, value: float) -> float:
        """Average of a float over the ranks."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        tdist.all_reduce(t)
        return float(t[0]) / self.world_size

    def gather(self, value: Any) -> list[Any]:
        """Every rank's value (tensors, numbers, strings), in rank order."""
        if self.world_size == 1:
            return [value]
        out: list = [None] * self.world_size
        tdist.all_gather_object(out, value)
        return out


def init_distributed() -> Distributed:
    """The process group of torchrun (env://, gloo), or a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not tdist.is_initialized():
        tdist.init_process_group("gloo")
    return Distributed(tdist.get_rank(), tdist.get_world_size())


@dataclass(frozen=True)
class StageSettings:
    steps: int
    batch_size: int
    lr: float
    warmup: int = 100  # linear warm-up steps
    weight_decay: float = 0.05
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    log_every: int = 20
    checkpoint_every: int = 250


@dataclass
class StageResult:
    name: str
    steps: int
    first_loss: float  # mean loss of the first logging interval
    final_loss: float  # mean loss of the last logging interval
    seconds: float  # wall time, summed over resumed runs


def learning_rate(step: int, s: StageSettings) -> float:
    """Linear warm-up to s.lr, then cosine decay to s.lr * s.min_lr_ratio at s.steps."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * cosine)


def make_optimizer(module: nn.Module, s: StageSettings) -> torch.optim.AdamW:
    """AdamW; no weight decay on vectors (norms, biases, layer scales) and embeddings."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            vector = p.ndim < 2 or "embed" in name or "token" in name
            (no_decay if vector else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": s.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.99))


def checkpoint_path(work_dir: Path, name: str) -> Path:
    return Path(work_dir) / name / "checkpoint.pt"


def read_checkpoint(path: Path) -> dict:
    """A checkpoint of tensors, numbers and strings only: nothing else is unpickled."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_stage_weights(module: nn.Module, work_dir: Path, name: str) -> dict:
    """Put a stage's checkpointed weights into `module`; returns the checkpoint."""
    ckpt = read_checkpoint(checkpoint_path(work_dir, name))
    module.load_state_dict(ckpt["model"])
    return ckpt


def _rng_states(generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"torch": torch.get_rng_state(), "sampler": generator.get_state()}


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be redone)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def train_stage(
    name: str,
    module: nn.Module,
    sample: Sampler,
    settings: StageSettings,
    work_dir: Path,
    dist: Distributed = Distributed(),
    seed: int = 0,
    stop_at: int | None = None,
    progress: bool = True,
) -> StageResult:
    """Train `module` (forward(*batch) -> (loss, metrics)) for settings.steps steps.

    Resumes from `<work_dir>/<name>/checkpoint.pt` when it exists. `stop_at` pauses after
    that step (a time-boxed job); running again continues from the checkpoint.
    """
    stage_dir = Path(work_dir) / name
    stage_dir.mkdir(parents=True, exist_ok=True)
    ckpt_file, log_file = stage_dir / "checkpoint.pt", stage_dir / "metrics.jsonl"
    module.train()
    optimizer = make_optimizer(module, settings)
    generator = torch.Generator()
    generator.manual_seed(seed * 1009 + dist.rank)
    torch.manual_seed(seed * 1013 + dist.rank)
    step, seconds, first_loss, last_loss = 0, 0.0, math.nan, math.nan
    if ckpt_file.is_file():
        ckpt = read_checkpoint(ckpt_file)
        module.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, seconds = int(ckpt["step"]), float(ckpt["seconds"])
        first_loss, last_loss = float(ckpt["first_loss"]), float(ckpt["loss"])
        states = ckpt["rng"]
        if len(states) == dist.world_size:
            torch.set_rng_state(states[dist.rank]["torch"])
            generator.set_state(states[dist.rank]["sampler"])
        else:  # another process count: a fresh, still distinct stream per rank
            generator.manual_seed(seed * 1009 + dist.rank + 7919 * step)
            torch.manual_seed(seed * 1013 + dist.rank + 7919 * step)
        if dist.main:
            _truncate_log(log_file, step)
    end = settings.steps if stop_at is None else min(settings.steps, stop_at)
    net = DistributedDataParallel(module) if dist.world_size > 1 else module

    def save() -> None:
        states = dist.gather(_rng_states(generator))
        if dist.main:
            body = {
                "step": step,
                "total_steps": settings.steps,
                "seconds": seconds,
                "first_loss": first_loss,
                "loss": last_loss,
                "model": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": states,
            }
            tmp = ckpt_file.with_suffix(".tmp")
            torch.save(body, tmp)
            os.replace(tmp, ckpt_file)
        dist.barrier()

    bar = tqdm(
        total=settings.steps,
        initial=step,
        desc=name,
        disable=not (progress and dist.main),
        dynamic_ncols=True,
    )
    window: list[float] = []
    extras: dict[str, list[float]] = {}
    started = time.perf_counter()
    while step < end:
        lr = learning_rate(step, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = sample(generator)
        loss, metrics = net(*batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            nn.utils.clip_grad_norm_(module.parameters(), settings.grad_clip)
        optimizer.step()
        step += 1
        bar.update(1)
        window.append(float(loss.detach()))
        for key, value in metrics.items():
            extras.setdefault(key, []).append(float(value.detach()))
        if step % settings.log_every == 0 or step == end:
            now = time.perf_counter()
            seconds += now - started
            started = now
            mean_loss = dist.mean(sum(window) / len(window))
            if math.isnan(first_loss):
                first_loss = mean_loss
            last_loss = mean_loss
            record = {"step": step, "loss": mean_loss, "lr": lr, "seconds": round(seconds, 2)}
            record.update({k: dist.mean(sum(v) / len(v)) for k, v in extras.items()})
            if dist.main:
                with log_file.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            window, extras = [], {}
        if step % settings.checkpoint_every == 0 or step == end:
            save()
    bar.close()
    module.eval()
    return StageResult(name, step, first_loss, last_loss, seconds)
