"""The runs the studio shows: every run directory in its runs folder, whoever trained it (the studio, or
`smallvision train` in a terminal), with what state it is in and its `live.jsonl` read as it grows."""

import json
import os
import re
import socket
from pathlib import Path

from smallvision.callbacks import LiveLog
from smallvision.checkpoint import NAME as CHECKPOINT
from smallvision.run import LOCK_NAME, is_run

SUMMARY = ("test_accuracy", "test_balanced_accuracy", "test_ece", "val_accuracy", "train_seconds",
           "images_per_second", "epochs")


def training_now(directory: Path) -> int | None:
    """The process writing this run now (its training lock names it), if it runs on this machine."""
    try:
        holder = (directory / LOCK_NAME).read_text()
    except OSError:
        return None
    found = re.fullmatch(r"process (\d+) on (.+)", holder.strip())
    if not found or found[2] != socket.gethostname():
        return None
    pid = int(found[1])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # killed with the lock file left behind: the kernel let go of the lock with it
    except PermissionError:
        pass  # someone else's process: alive
    return pid


def read_live(directory: Path, offset: int = 0) -> tuple[list[dict], int]:
    """The rows of the run's live.jsonl from byte `offset` on, and the offset after the last whole line (a
    line still being written is left for the next read)."""
    try:
        with open(directory / LiveLog.NAME, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    rows = []
    for line in data[:end].splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line from an interrupted write: the next ones are whole
    return rows, offset + end


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_state(directory: Path, rows: list[dict] | None = None) -> str:
    """training (its process is alive), finished (it wrote model.json), stopped (it stopped as asked, with a
    checkpoint to resume from), or ended (its process ended without a word: killed, crashed or out of memory).
    `rows`: its live.jsonl, where the caller has read it already."""
    if training_now(directory):
        return "training"
    if (directory / "model.json").is_file():
        return "finished"
    if rows is None:
        rows, _ = read_live(directory)
    last = rows[-1]["event"] if rows else None
    return "stopped" if last == "stop" else "ended"


def summary(directory: Path) -> dict:
    """What the runs list shows of one run."""
    metrics = read_json(directory / "metrics.json")
    training = read_json(directory / "training.json")
    rows, _ = read_live(directory)
    starts = [row for row in rows if row.get("event") == "start"]
    state = run_state(directory, rows)
    # an epoch redone after a kill (its row written, its checkpoint not) counts once
    epochs = {(row.get("stage"), row.get("epoch")) for row in rows if row.get("event") == "epoch"}
    return {"name": directory.name, "state": state, "source": training.get("source"),
            "recipe": starts[-1].get("recipe") if starts else None,
            "resumable": state in ("stopped", "ended") and (directory / CHECKPOINT).is_file(),
            "epochs_done": len(epochs), "metrics": {key: metrics[key] for key in SUMMARY if key in metrics}}


def list_runs(folder: Path) -> list[dict]:
    """Every run in `folder`, newest first."""
    if not folder.is_dir():
        return []
    found = [entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith(".")
             and (is_run(entry) or (entry / LiveLog.NAME).is_file() or (entry / "training.json").is_file())]
    found.sort(key=lambda entry: entry.stat().st_mtime, reverse=True)
    return [summary(entry) for entry in found]
