"""Starting a run of several processes: `train --processes N` (and `--nodes`) hands the command to torchrun,
passes the processes' output through once, and turns torchrun's failure reports into one line and the exit
status a user expects. No torch here: the launching process only waits, and starts in a blink rather than
paying for PyTorch's import (distributed.py is what each process runs)."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from smallvision.errors import SmallvisionError


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


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
