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

Backend: it follows the training device, not what the machine has. A CUDA
run uses nccl, each rank binds `cuda:LOCAL_RANK` (DDP gets `device_ids`) and
every collective's tensors live on that GPU; any other run (CPU, MPS) uses
gloo and its collectives' tensors live on the CPU. `Distributed.device` is
the backend's device; the gathers return CPU tensors (they go into
checkpoints).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Distributed", "backend_for", "init_distributed", "local_rank", "shutdown"]


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")  # where the backend's collectives take their tensors

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
        """Concatenate every rank's (L, b, S) state rows into (L, B, S), on every rank, on the CPU."""
        if not self.enabled:
            return tensor.cpu()
        return torch.cat(self._all_gather(tensor), dim=1)

    def gather_stack(self, tensor: torch.Tensor) -> torch.Tensor:
        """Stack every rank's tensor (same shape) along a new first dimension, on the CPU."""
        if not self.enabled:
            return tensor.cpu().unsqueeze(0)
        return torch.stack(self._all_gather(tensor))

    def _all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `tensor`, gathered on the backend's device and returned on the CPU."""
        local = tensor.detach().to(self.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return [part.cpu() for part in parts]

    def agree(self, stop: bool, elapsed: float, loss: float) -> tuple[bool, float, float]:
        """All ranks stop together, count the slowest rank's time, and log the mean loss of all rows."""
        if not self.enabled:
            return stop, elapsed, loss
        flags = torch.tensor([float(stop), elapsed], dtype=torch.float64, device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        total = torch.tensor([loss], dtype=torch.float64, device=self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return bool(flags[0].item()), float(flags[1].item()), float(total.item()) / self.world_size

    def weight_spread(self, model: torch.nn.Module) -> float:
        """The largest difference between any rank's weights and rank 0's (0 when they are identical)."""
        if not self.enabled:
            return 0.0
        largest = torch.zeros((), dtype=torch.float64, device=self.device)
        for parameter in model.parameters():
            mine = parameter.detach().to(self.device)
            reference = mine.clone()
            dist.broadcast(reference, src=0)
            largest = torch.maximum(largest, (mine - reference).abs().max().double())
        dist.all_reduce(largest, op=dist.ReduceOp.MAX)
        return float(largest.item())

    def broadcast_floats(self, values: list[float]) -> list[float]:
        """Rank 0's values, on every rank."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(device_ids=[self.device.index]) if self.device.type == "cuda" else dist.barrier()


def backend_for(device: torch.device) -> tuple[str, torch.device]:
    """The process-group backend for a training device and the device its collectives use:
    nccl on the rank's GPU for CUDA, gloo on the CPU for anything else."""
    if device.type == "cuda":
        return "nccl", device
    return "gloo", torch.device("cpu")


def local_rank() -> int | None:
    """This process's LOCAL_RANK under torchrun with several processes; None for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: torch.device = torch.device("cpu")) -> Distributed:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); otherwise a single process.

    `device` is this rank's training device (`cuda:LOCAL_RANK` for a CUDA run, see lm/train/devices.py).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    backend, collective_device = backend_for(device)
    if collective_device.type == "cuda":
        torch.cuda.set_device(collective_device)  # nccl's own buffers and barrier() go to this rank's GPU
    if not dist.is_initialized():
        kwargs = {"device_id": collective_device} if collective_device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30), **kwargs)
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), backend,
                       collective_device)


def shutdown(info: Distributed) -> None:
    """Leave the process group."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
