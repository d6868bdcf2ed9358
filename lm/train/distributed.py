"""Multi-process training with PyTorch's own engine: torchrun and DistributedDataParallel.

    torchrun --nproc_per_node=2 train.py --preset small --out runs/ddp
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 train.py ...

How Reach splits the work: the B parallel streams of truncated BPTT are
split across the ranks (rank r takes rows r*B/N .. (r+1)*B/N - 1), and each
rank carries its own rows' hidden state through the windows. DDP averages
the gradients of all ranks during backward, so the gradient every rank clips
is the global one (clipping uses the global norm) and every rank takes the
same update: weights stay identical. Rank 0 alone evaluates, writes
checkpoints and metrics, and shares its decisions; every per-step decision
(stop, budget) is agreed by all ranks so that none waits forever.

Backend: gloo on CPU, nccl when CUDA is present.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Distributed", "init_distributed", "shutdown"]


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of the B streams."""
        if batch_size % self.world_size:
            raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes ({self.world_size})")
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's (L, b, S) state rows into (L, B, S), on every rank."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=1)

    def gather_stack(self, tensor: torch.Tensor) -> torch.Tensor:
        """Stack every rank's tensor (same shape) along a new first dimension."""
        if not self.enabled:
            return tensor.unsqueeze(0)
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    def agree(self, stop: bool, elapsed: float, loss: float) -> tuple[bool, float, float]:
        """All ranks stop together, count the slowest rank's time, and log the mean loss of all rows."""
        if not self.enabled:
            return stop, elapsed, loss
        flags = torch.tensor([float(stop), elapsed], dtype=torch.float64)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        total = torch.tensor([loss], dtype=torch.float64)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return bool(flags[0].item()), float(flags[1].item()), float(total.item()) / self.world_size

    def weight_spread(self, model: torch.nn.Module) -> float:
        """The largest difference between any rank's weights and rank 0's (0 when they are identical)."""
        if not self.enabled:
            return 0.0
        largest = torch.zeros((), dtype=torch.float64)
        for parameter in model.parameters():
            reference = parameter.detach().clone()
            dist.broadcast(reference, src=0)
            largest = torch.maximum(largest, (parameter.detach() - reference).abs().max().double())
        dist.all_reduce(largest, op=dist.ReduceOp.MAX)
        return float(largest.item())

    def broadcast_floats(self, values: list[float]) -> list[float]:
        """Rank 0's values, on every rank."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.broadcast(tensor, src=0)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed() -> Distributed:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), backend)


def shutdown(info: Distributed) -> None:
    """Leave the process group."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
