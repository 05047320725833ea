"""What the studio makes of a finished run, each by the CLI in a process of its own: the ONNX and Keras files
and the HTML report (`Products`, kept in the runs folder's .studio/, never in the run), its evaluation on its
test split (`evaluate`, in the run's eval-SOURCE-SPLIT/ as the CLI writes it) and Grad-CAM pictures
(`explain`), and a `serve` of the run to try it on photos (`Tried`: one at a time)."""

import json
import os
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
        smallvision(command, str(run), *extra, "-o", str(out), "--force")
        return out

    def evaluate(self, run: Path) -> Path:
        """`smallvision evaluate RUN`: the run on the test split of its own source; the folder it wrote (its
        last line), which must be inside the run."""
        lines = smallvision("evaluate", str(run)).splitlines()
        folder = Path(lines[-1].strip()).resolve() if lines else None
        if folder is None or run.resolve() not in folder.parents or not (folder / "predictions.csv").is_file():
            raise SmallvisionError(f"{run.name}: evaluate wrote no predictions.csv where the studio looks")
        return folder

    def gradcam_folder(self, run: Path) -> Path:
        return self.runs / LOGS / "gradcam" / run.name

    def explain(self, run: Path, files: list[Path]) -> list[dict]:
        """`smallvision explain RUN FILES`: a Grad-CAM picture for each file (in gradcam_folder), one answer
        each (`picture`, or `error` for a file it could not read)."""
        out = self.gradcam_folder(run)
        out.mkdir(parents=True, exist_ok=True)
        answers = []
        for line in smallvision("explain", str(run), *map(str, files), "-o", str(out), allowed=(0, 2)).splitlines():
            try:
                answers.append(json.loads(line))
            except ValueError:
                continue
        return answers


def smallvision(command: str, *arguments: str, allowed: tuple[int, ...] = (0,)) -> str:
    """The CLI in a process of its own; its standard output, or its own last line as the error."""
    done = subprocess.run([sys.executable, "-m", "smallvision", command, *arguments], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env={**os.environ, "SMALLVISION_PROGRESS": "0"})
    if done.returncode not in allowed:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise SmallvisionError((lines or [f"smallvision {command} ended with status {done.returncode}"])[-1])
    return done.stdout


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
