"""One training at a time, each in a process of its own: `smallvision train` started by the studio, so a
crash or an out-of-memory ends that run, not the page, and the run is the same run the CLI would make.

The process runs in a session of its own: stopping or restarting the studio leaves a training going, and the
next studio finds it again by its training lock (runs.training_now). Stop is Ctrl-C's SIGINT: the training
writes its checkpoint and ends; Resume is `train --resume`.
"""

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from smallvision.errors import SmallvisionError
from smallvision.studio.runs import training_now

STOPPED = 130  # train's exit status when it stopped as asked (Ctrl-C, SIGTERM): a checkpoint to resume from
LOGS = ".studio"  # inside the runs folder: each training's output, <run>.log (a run's own folder stays the CLI's)


def start_logged(command: list[str], log: Path, append: bool = False, own_session: bool = False,
                 environment: dict | None = None) -> subprocess.Popen:
    """`smallvision COMMAND` in a process of its own, its output (stdout and stderr) into `log`: appended for a
    training that resumes (its earlier attempts stay readable), afresh otherwise; in a session of its own where
    it must outlive the studio (a training)."""
    with open(log, "ab" if append else "wb") as output:
        return subprocess.Popen([sys.executable, "-m", "smallvision", *command], stdout=output,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=own_session,
                                env={**os.environ, **(environment or {})})


class Busy(SmallvisionError):
    """A second training while one runs."""


@dataclass
class Started:
    run: Path
    process: subprocess.Popen
    log: Path


class Trainer:
    def __init__(self, runs: Path):
        self.runs = runs
        self.current: Started | None = None
        self.lock = threading.Lock()

    def busy_with(self) -> str | None:
        """The run being trained now on this machine from this runs folder (by the studio or a terminal)."""
        if self.current is not None and self.current.process.poll() is None:
            return self.current.run.name
        for run in self.runs.iterdir() if self.runs.is_dir() else ():
            if run.is_dir() and training_now(run):  # by its lock alone: no run's files read
                return run.name
        return None

    def start(self, arguments: list[str], run: Path) -> Started:
        """`smallvision train ARGUMENTS --out RUN` in a process of its own, or Busy."""
        return self.launch(["train", *arguments, "--out", str(run)], run)

    def resume(self, run: Path) -> Started:
        return self.launch(["train", "--resume", str(run)], run)

    def launch(self, command: list[str], run: Path) -> Started:
        with self.lock:
            other = self.busy_with()
            if other is not None:
                raise Busy(f"{other} is training now; one training at a time on this machine: stop it or wait "
                           f"for it to end")
            logs = self.runs / LOGS
            logs.mkdir(parents=True, exist_ok=True)
            log = logs / f"{run.name}.log"
            self.current = Started(run, start_logged(command, log, append=True, own_session=True), log)
            return self.current

    def stop(self, run: Path) -> int:
        """Ask the process training `run` to stop (it writes a checkpoint first); its pid."""
        pid = training_now(run)
        if pid is None and self.current is not None and self.current.run == run and self.current.process.poll() is None:
            pid = self.current.process.pid  # started, not yet holding its lock
        if pid is None:
            raise Busy(f"{run.name} is not training now")
        os.kill(pid, signal.SIGINT)
        return pid

    def status(self) -> dict:
        """The studio's own last training: its run, whether it still runs, and how it ended."""
        current = self.current
        if current is None:
            return {"run": None}
        code = current.process.poll()
        answer = {"run": current.run.name, "running": code is None, "exit_code": code}
        if code not in (None, 0, STOPPED):
            answer["why"] = ended_why(code, current.log)
        return answer


def ended_why(code: int, log: Path) -> str:
    """One line on how a training process ended other than well."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the training process was killed ({name}) from outside; Resume continues from its last checkpoint"
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    errors = [line for line in lines if line.startswith("error")]
    return (errors or lines or [f"exit status {code}"])[-1]
