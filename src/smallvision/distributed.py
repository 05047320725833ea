"""Several processes training one run, with PyTorch's own engine: torch.distributed, started by torchrun.

torchrun (or `train --processes N`, which starts it for you) runs N copies of the same command and
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
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from smallvision.errors import SmallvisionError

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


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


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


@dataclass(frozen=True)
class Machines:
    """Several machines in one run: how many, this one's place, where node 0 listens (HOST:PORT), and how
    long to wait for all of them to join."""
    nodes: int
    node_rank: int
    rendezvous: str
    timeout: int = 120

    def torchrun_flags(self) -> list[str]:
        host, _, port = self.rendezvous.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SmallvisionError(f"--rendezvous {self.rendezvous!r}: give HOST:PORT, where node 0 listens, "
                                   f"e.g. 10.0.0.1:29500")
        # torchrun's static rendezvous waits 600 s by default, then fails with a screen of traceback; ours
        # is bounded, and LauncherReport turns its failure into one line
        return [f"--nnodes={self.nodes}", f"--node-rank={self.node_rank}", f"--master-addr={host.strip('[]')}",
                f"--master-port={port}", f"--rdzv-conf=timeout={self.timeout}"]


def launch(processes: int, argv: list[str], machines: Machines | None = None) -> int:
    """Start `smallvision ARGV` as `processes` processes on this machine under torchrun (alone: its
    standalone rendezvous on a free local port; with `machines`, one of several that meet at node 0);
    the exit status of the first that failed (0 when none did). A failing process stops the others:
    torchrun ends the group when one of its workers fails."""
    where = machines.torchrun_flags() if machines else ["--standalone"]
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(
        1, (os.cpu_count() or 1) // processes)))}  # the cores shared out, not each process taking them all
    # torchrun keeps its workers' error files in a log directory it makes under /tmp and never removes
    # (one torchelastic_* directory per run); ours goes when the run does
    with tempfile.TemporaryDirectory(prefix="smallvision-torchrun-") as logs:
        command = [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc-per-node={processes}",
                   "--max-restarts=0", f"--log-dir={logs}", "-m", "smallvision", *argv]
        return _run_torchrun(command, environment, machines)


def _run_torchrun(command: list[str], environment: dict[str, str], machines: Machines | None) -> int:
    started = time.monotonic()
    process = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE)
    report, interrupted = LauncherReport(), False

    def on_interrupt(number, frame) -> None:
        # The processes got the Ctrl-C too (one process group): let them write their checkpoint. Noted here
        # rather than raised wherever the launcher happened to be, so that the exit status is always 130
        nonlocal interrupted
        if interrupted:
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once
        interrupted = True

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_interrupt) if main_thread else None
    try:
        while piece := process.stderr.read1(65536):
            report.feed(piece)
        report.feed(b"", final=True)
        code = process.wait()
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    if interrupted and code:
        return 130  # whatever torchrun made of the signal it got too: the run stopped because it was asked to
    if code and report.unreachable and machines:
        raise SmallvisionError(f"could not meet the other machines at {machines.rendezvous} (gave up after "
                               f"{time.monotonic() - started:.0f} s, {machines.timeout} s a try): start node 0 "
                               f"(--node-rank 0, which listens there) and every other node, check that this "
                               f"machine can reach that address and port, or wait longer with --rendezvous-timeout")
    if code and report.exit_code:
        return report.exit_code
    return code


class LauncherReport:
    """Passes the processes' stderr through, progress bars included, but each line once (every process
    says the same error) and without torchrun's own log lines and failure report, whose root cause's
    exit status it keeps: the user sees our one line, not three screens."""

    LOG_LINE = re.compile(rb"^\[?[EWI]\d{4} \d\d:\d\d:\d\d")
    # c10d's C++ stack dumps under its log lines ("Exception raised from ...", "frame #3: ..."): noise to a user
    NATIVE_TRACE = re.compile(rb"^(Exception raised from |frame #\d+: |<omitting python frames>)")
    EXIT = re.compile(rb"exitcode\s*:\s*(-?\d+)")
    RENDEZVOUS_FAILURES = (b"DistNetworkError", b"RendezvousTimeoutError", b"RendezvousConnectionError",
                           b"DistStoreError")

    def __init__(self):
        self.pending, self.seen, self.closing, self.block = b"", set(), False, None
        self.exit_codes: list[int] = []  # in the report's order: the other failures, then the root cause
        self.unreachable = False  # torchrun itself failed to meet the other machines (no worker ever started)
        self.in_native_trace = False

    def feed(self, data: bytes, final: bool = False) -> None:
        self.pending += data
        pieces = re.split(rb"(?<=[\n\r])", self.pending)
        self.pending = b"" if final else pieces.pop()
        for piece in pieces:
            self.show(piece)
        if final and self.block:
            self.write(b"".join(self.block))

    def show(self, piece: bytes) -> None:
        line = piece.strip()
        if self.closing:  # torchrun's failure report: only the exit statuses matter
            found = self.EXIT.search(line)
            if found:
                self.exit_codes.append(int(found.group(1)))
            return
        if self.block is not None:  # a traceback, held until its last line says whose it is
            self.block.append(piece)
            if line and not piece.startswith((b" ", b"\t")):
                block, self.block = b"".join(self.block), None
                if b"torch/distributed/run.py" in block:
                    self.closing = True  # torchrun's own, after every process has ended
                    self.unreachable = any(name in block for name in self.RENDEZVOUS_FAILURES)
                else:
                    self.write(block)
            return
        if line.startswith(b"Traceback (most recent call last)"):
            self.block = [piece]
            return
        if self.NATIVE_TRACE.match(line) or (self.in_native_trace and not line):  # its blank line ends it
            self.in_native_trace = bool(line)
            return
        if self.LOG_LINE.match(line) or (line.startswith(b"smallvision: error:") and line in self.seen):
            return
        self.seen.add(line)
        self.write(piece)

    @property
    def exit_code(self) -> int | None:
        """The status a user should see: a process's own (our 2 for an error, 130 for Ctrl-C) rather than
        the SIGTERM torchrun sent the others once one had failed, which its report may list, even as the
        "root cause" when the processes ended together; a signal alone as a shell says it (128 + N)."""
        own = [code for code in self.exit_codes if code > 0]
        if own:
            return own[-1] if self.exit_codes[-1] > 0 else own[0]
        return 128 - self.exit_codes[-1] if self.exit_codes else None

    @staticmethod
    def write(data: bytes) -> None:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()
