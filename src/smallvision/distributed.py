"""Several processes training one run, with PyTorch's own engine: torch.distributed, started by torchrun.

torchrun (or `train --processes N`, which starts it for you: launcher.py) runs N copies of the same command and
tells each its place in environment variables: RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous.
Every process holds the same data and the same initial weights (the seed fixes both), walks the same
shuffled order, and takes its own contiguous share of every batch; after each backward pass the flat
gradient buffers are summed across processes, each share's loss having been weighted by its part of
the batch, so the step is the one a single process takes on the whole batch. Batch normalisation
takes its statistics over the whole batch (`batch_norm_statistics`). Only rank 0 writes files.

gloo on the CPU, NCCL on GPUs. Nothing here is used by a run of one process.
"""

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from smallvision.errors import SmallvisionError
from smallvision.launcher import launched

# batch_norm_statistics needs the differentiable all_reduce, which warns on every call that it is deprecated
warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_reduce is deprecated", FutureWarning)
TIMEOUT = datetime.timedelta(minutes=10)  # a process that stops answering stops the others after this long


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """The process that writes the run's files and prints."""
        return self.rank == 0

    def share(self, count: int) -> tuple[int, int]:
        """(start, stop) of this process's contiguous share of `count` items; the first shares take the
        remainder, so shares differ by one at most and together cover every item once."""
        base, extra = divmod(count, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)


def ranks() -> Ranks:
    """This process's place: from torch.distributed once it has started, else one process alone."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())
    return Ranks()


def local_processes() -> int:
    """How many processes of the run share this machine (torchrun says so)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def start(device: torch.device) -> Ranks:
    """Join the process group torchrun described (gloo on the CPU, NCCL on a GPU); one process alone
    when torchrun did not start this one. A GPU process takes the GPU of its local rank."""
    if not launched() or dist.is_initialized():
        return ranks()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise SmallvisionError(f"process {local_rank} on this machine has no GPU: there are "
                                   f"{torch.cuda.device_count()}; start at most that many per machine")
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    except (RuntimeError, ValueError) as err:  # DistNetworkError and friends: the rendezvous was not reached
        raise SmallvisionError(f"could not join the other processes ({' '.join(str(err).split())[:300]}); check "
                               f"torchrun's --rdzv-endpoint (or MASTER_ADDR and MASTER_PORT) and that every "
                               f"machine can reach it") from None
    return ranks()


def process_device(device: torch.device) -> torch.device:
    """The device this process trains on: its own GPU when several share a machine."""
    if device.type == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def sum_across(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over every process, in place (unchanged for one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def max_across(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def barrier() -> None:
    """Wait until every process is here (rank 0 has decoded the data, written the directory, ...)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (decoding a folder, computing features: filling the caches), then the
    others, which find its work on disk: no two processes decode the same file or write the same cache."""
    main = not active() or dist.get_rank() == 0
    if not main:
        barrier()
    try:
        yield
    finally:
        if main:
            barrier()


def from_main(text: str | None) -> str | None:
    """Rank 0's `text` in every process (the run directory's name, chosen once)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return text
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    encoded = torch.zeros(4096, dtype=torch.uint8)
    if dist.get_rank() == 0 and text is not None:
        data = text.encode()[:4095]
        encoded[:len(data)] = torch.tensor(list(data), dtype=torch.uint8)
        encoded[4095] = 1  # a text was given (an empty one is a text too)
    encoded = encoded.to(on)  # NCCL carries GPU tensors only
    dist.broadcast(encoded, 0)
    encoded = encoded.cpu()
    if not encoded[4095]:
        return None
    return bytes(encoded[:4095].tolist()).rstrip(b"\0").decode()


def batch_norm_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, biased variance, count) per channel of `x` [N, C, H, W] over every process's share of the
    batch, differentiable (the sums travel through torch.distributed.nn's all_reduce, whose backward
    sums the gradients back): what SyncBatchNorm computes, on the CPU too."""
    from torch.distributed.nn.functional import all_reduce  # differentiable; its successor is not public yet

    x = x.float()
    count = torch.full((1,), x.numel() // x.shape[1], dtype=torch.float32, device=x.device)
    sums = all_reduce(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count]))
    channels = x.shape[1]
    total = sums[-1]
    mean = sums[:channels] / total
    variance = (sums[channels:2 * channels] / total - mean * mean).clamp_min(0)
    return mean, variance, total


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
