"""Where training runs and in what precision: the device, autocast, the fp16 gradient scaler, the accelerator's RNG.

The model, the batchified training data, the carried hidden state and
evaluation all live on one device, chosen here from `TrainConfig.device`;
checkpoints are device-independent (lm/checkpoint.py saves CPU copies and
loads onto the CPU). Serving stays on the CPU engine (lm/infer).

Precision: the weights, the optimiser and the carried state stay float32;
`--precision bf16|fp16` autocasts the forward pass (torch.autocast), and
fp16 also scales the loss (torch.amp.GradScaler) so that small gradients do
not underflow. The loop unscales before clipping, so the clipping threshold
and the logged pre-clip norm are in the same units at every precision.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from lm.train.distributed import local_rank

__all__ = ["autocast", "accelerator_rng_state", "describe_device", "make_scaler", "resolve_device", "set_accelerator_rng_state",
           "training_device"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The torch device for a `--device` value; raises ValueError, in one sentence, for one this machine lacks.

    `auto` is the accelerator torch finds (`torch.accelerator`), else the CPU.
    Under torchrun (`local_rank` given) a CUDA run binds `cuda:LOCAL_RANK`,
    one GPU per process; naming a GPU there (`cuda:N`) is refused.
    """
    if name == "auto":
        accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        name = accelerator.type if accelerator is not None else "cpu"
    kind, _, index = name.partition(":")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("--device mps: this machine has no Apple GPU that torch can use (try --device cpu)")
        return torch.device("mps")
    if kind != "cuda":
        raise ValueError(f"--device {name}: only cpu, cuda, cuda:N and mps are supported")
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        raise ValueError(f"--device {name}: CUDA is not available here ({build}, {torch.cuda.device_count()} GPUs visible); "
                         "use --device cpu or auto")
    count = torch.cuda.device_count()
    if local_rank is not None:
        if index:
            raise ValueError(f"--device {name}: under torchrun each process binds the GPU of its LOCAL_RANK; pass --device cuda")
        if local_rank >= count:
            raise ValueError(f"LOCAL_RANK {local_rank} has no GPU: this machine has {count}; start at most {count} processes per node")
        return torch.device("cuda", local_rank)
    number = int(index) if index else torch.cuda.current_device()
    if number >= count:
        raise ValueError(f"--device {name}: this machine has {count} GPU{'s' if count != 1 else ''} (cuda:0 .. cuda:{count - 1})")
    return torch.device("cuda", number)


def training_device(name: str) -> torch.device:
    """The device this training process uses for `TrainConfig.device` = `name`: `resolve_device` with this process's
    LOCAL_RANK under torchrun (one GPU per process). `train_run` trains there; `train.py` asks the same before it
    joins the process group, whose backend depends on it."""
    return resolve_device(name, local_rank())


def describe_device(device: torch.device) -> str:
    """The device as a person would name it: `cuda:0 (NVIDIA H200)`, `cpu`."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """The forward pass's precision: nothing for fp32, else torch.autocast to bf16 or fp16 on `device`.

    On the CPU, oneDNN's fused RNN kernels have no bf16/fp16 path on CPUs
    without AVX512-BF16/AMX (they fail to build a primitive, measured on an
    AVX2 EPYC), so oneDNN is off inside the CPU forward: the recurrent
    layers run ATen's float32 kernels and the linear layers autocast. CPU
    autocast is for testing the path; it is slower than fp32 there.
    """
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=_DTYPES[precision]):
        if device.type != "cpu":
            yield
            return
        previous = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            yield
        finally:
            torch.backends.mkldnn.enabled = previous


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (its 5-bit exponent underflows small gradients), None otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def accelerator_rng_state(device: torch.device) -> torch.Tensor | None:
    """The RNG state of the CUDA device training uses (its dropout masks come from it), or None on other devices."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_rng_state(device)


def set_accelerator_rng_state(device: torch.device, state: torch.Tensor | None) -> bool:
    """Restore what `accelerator_rng_state` returned; False when there is nothing to restore on this device."""
    if device.type != "cuda" or state is None:
        return False
    torch.cuda.set_rng_state(state.cpu(), device)
    return True
