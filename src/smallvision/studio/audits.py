"""The studio's audits: `smallvision data audit SOURCE --out DIR` in a process of its own, one at a time and
not while a training runs (each wants every core), and its findings read back for the page: suspected
mislabels, near-duplicates and leaks, outliers, each row with what became of its photo since.

The findings live in the runs folder's .studio/audits/, never in the source; a photo is relabelled or removed
through the source's journal (journal.fix_photo), and "keep" is written into the table's action column, as a
person editing the table for `data apply` would."""

import csv
import hashlib
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from smallvision.errors import SmallvisionError
from smallvision.studio.trainer import LOGS, Busy, ended_why, start_logged

TABLES = ("label_issues", "near_duplicates", "outliers")


@dataclass
class Auditing:
    source: Path
    out: Path
    process: subprocess.Popen
    log: Path


class Audits:
    def __init__(self, runs: Path):
        self.folder = runs / LOGS / "audits"
        self.current: Auditing | None = None
        self.lock = threading.Lock()

    def out(self, source: Path) -> Path:
        """Where the audit of `source` is written: its name and a hash of its path (two folders named alike)."""
        return self.folder / f"{source.name}-{hashlib.sha1(str(source).encode()).hexdigest()[:8]}"

    def running(self) -> Path | None:
        """The source being audited now, if any."""
        current = self.current
        return current.source if current is not None and current.process.poll() is None else None

    def start(self, source: Path, training: str | None) -> None:
        with self.lock:
            if training:
                raise Busy(f"{training} is training now; audit once it has ended (both would want every core)")
            auditing = self.running()
            if auditing is not None:
                raise Busy(f"{auditing.name} is being audited now; one audit at a time")
            out = self.out(source)
            out.mkdir(parents=True, exist_ok=True)
            log = out / "audit.log"
            process = start_logged(["data", "audit", str(source), "--out", str(out)], log,
                                   environment={"SMALLVISION_PROGRESS": "0"})
            self.current = Auditing(source, out, process, log)

    def state(self, source: Path) -> dict:
        """"auditing", "failed" (with why), "done" (with the findings) or "none"."""
        current = self.current
        if current is not None and current.source == source:
            code = current.process.poll()
            if code is None:
                return {"state": "auditing"}
            if code != 0:
                return {"state": "failed", "why": ended_why(code, current.log)}
        out = self.out(source)
        if not (out / "audit.json").is_file():
            return {"state": "none"}
        return {"state": "done", "findings": {table: read_rows(out / f"{table}.csv", source) for table in TABLES}}

    def keep(self, source: Path, table: str, relative: str, split: str | None = None) -> None:
        """Write "keep" into the table's action column for the photo's row (of `split`, where given)."""
        if table not in TABLES:
            raise SmallvisionError(f"{table!r}: the audit's tables are {', '.join(TABLES)}")
        set_action(self.out(source) / f"{table}.csv", relative, "keep", split)


def read_rows(path: Path, source: Path) -> list[dict]:
    """A table's rows, each with whether its photo is still where the audit saw it."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["here"] = (source / row["path"]).is_file()
    return rows


def set_action(path: Path, relative: str, action: str, split: str | None = None) -> None:
    """`action` into the rows of the photo at `relative` (of `split` only, where given: a digit of IDX files
    is named by its index, which each split has)."""
    from smallvision.files import write_atomically

    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    header = rows[0] if rows else []
    if "path" not in header or "action" not in header:
        raise SmallvisionError(f"{path}: not an audit table (no path and action columns)")
    where, what = header.index("path"), header.index("action")
    place = header.index("split") if split is not None and "split" in header else None
    found = [row for row in rows[1:] if len(row) > max(where, what) and row[where] == relative
             and (place is None or row[place] == split)]
    if not found:
        raise SmallvisionError(f"{path.name}: no row for {relative}")
    for row in found:
        row[what] = action

    def write(target: Path) -> None:
        with open(target, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)

    write_atomically(path, write)
