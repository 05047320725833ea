"""What the studio makes of a finished run, each by the CLI in a process of its own: the ONNX and Keras files
and the HTML report (`Products`, kept in the runs folder's .studio/, never in the run), and a `serve` of the
run to try it on photos (`Tried`: one at a time)."""

import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

from smallvision.errors import SmallvisionError
from smallvision.studio.trainer import LOGS

MADE = {"onnx": ("export", "model.onnx", ["--format", "onnx"]), "keras": ("export", "model.keras", ["--format", "keras"]),
        "report": ("report", "report.html", [])}


class Products:
    def __init__(self, runs: Path):
        self.runs = runs

    def path(self, run: Path, what: str) -> Path:
        if what not in MADE:
            raise SmallvisionError(f"{what!r}: the studio makes {', '.join(MADE)}")
        _, name, _ = MADE[what]
        return self.runs / LOGS / "made" / run.name / f"{run.name}-{name}"

    def make(self, run: Path, what: str) -> Path:
        out = self.path(run, what)
        command, _, extra = MADE[what]
        out.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "smallvision", command, str(run), *extra, "-o", str(out), "--force"],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            raise SmallvisionError((lines or [f"smallvision {command} ended with status {done.returncode}"])[-1])
        return out


class Tried:
    """The run being tried: `smallvision serve RUN --port 0` on loopback, replaced by the next one asked for."""

    def __init__(self):
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def start(self, run: Path, token: str | None) -> str:
        with self.lock:
            self.stop()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "smallvision", "serve", str(run), "--port", "0",
                 *(["--token", token] if token else [])],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
            lines: queue.Queue = queue.Queue()

            def read(stdout) -> None:
                for line in stdout:
                    lines.put(line)
                lines.put(None)  # it ended: a serve that fails at once is said at once, not after the timeout

            threading.Thread(target=read, args=(self.process.stdout,), daemon=True).start()
            try:
                first = lines.get(timeout=120)
            except queue.Empty:
                first = ""
            found = re.search(r" at (http://\S+/) ", first or "")
            if not found:
                why = [line for line in self.process.stderr.read().splitlines() if line.strip()] \
                    if first is None else [first.strip() or "no answer in 120 s"]
                self.stop()
                raise SmallvisionError(f"{run.name}: serve did not start ({(why or ['it ended without a word'])[-1]})")
            return found.group(1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None
