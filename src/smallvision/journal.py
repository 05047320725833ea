"""Fixes to a user's image folder that lose nothing: an audit's tables (label_issues.csv, near_duplicates.csv,
outliers.csv) applied as moves, each one written to a journal before it is made, and undone from that journal,
byte for byte.

    write_audit_record(out_dir, root, "folder", class_names, relpaths)   # the audit: every file's fingerprint
    report = apply_actions(out_dir / "label_issues.csv")                # the user's actions, as moves
    undo(root)                                                          # every move put back, newest first
    fix_photo(root, "train/cats/cat.3.jpg", "relabel", "dogs")           # one photo, as the studio asks
    undo_last(root)                                                     # the newest move put back

Nothing is ever deleted or overwritten. `relabel` moves a file into the suggested class's folder of the same
split (the path below the class folder kept); `remove` moves it into `ROOT/.smallvision-removed/`, a hidden
folder the folder reader never looks into, as it never sees the journal, `ROOT/.smallvision-journal.jsonl`.
Everything a table asks for is checked before the first file moves (the actions, the classes, the paths, each
file against its fingerprint at audit time, the folders' write permission), so a problem refuses the whole
table with one line and an untouched folder. `fix_photo` makes one move a person asked for while looking at the
photo (the studio), checked the same way against the file as it is now. Each move is announced in the journal (flushed to disk) before it
is made and confirmed after, so a crash between the two leaves a journal that `undo` still reads right: it
looks at which side of the move the file is on.

No PyTorch at import: the folder's layout (`data.folders.scan_folder`, which imports it) is read only when a
table relabels something.
"""

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from smallvision.errors import SmallvisionError, unknown_name
from smallvision.files import write_atomically

AUDIT_FORMAT = "smallvision-audit/1"
AUDIT_RECORD = "audit.json"
JOURNAL = ".smallvision-journal.jsonl"
REMOVED = ".smallvision-removed"
COLUMNS = {"label_issues": ("path", "split", "label", "suggested", "score", "action"),  # told apart in this order:
           "near_duplicates": ("group", "path", "split", "similarity", "action"),     # outliers' columns are a
           "outliers": ("path", "split", "label", "score", "action")}                 # subset of label_issues'
ACTIONS = {"label_issues": ("relabel", "remove", "keep"), "near_duplicates": ("remove", "keep"),
           "outliers": ("remove", "keep")}
KINDS = ("folder", "idx")
CHUNK = 1 << 20


# ---- fingerprints and the audit record ----

def fingerprint(path: Path) -> dict:
    """A file's size, modification time (ns) and SHA-1 of its bytes: what `apply_actions` compares, so that a file
    changed since the audit is never moved on the strength of a judgement about its old content."""
    path = Path(path)
    stat = os.stat(path)
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha1": digest.hexdigest()}


def write_audit_record(out_dir: str | Path, source_root: str | Path, kind: str, class_names: list[str],
                       relpaths) -> Path:
    """Write `out_dir/audit.json` atomically: the source's absolute root, its kind ("folder" or "idx"), its class
    names and the fingerprint of every file in `relpaths` (relative to `source_root`), the record `apply_actions`
    checks a table's files against. Returns the file's path."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    root = Path(source_root).resolve()
    files = {}
    for rel in relpaths:
        rel = PurePosixPath(Path(rel).as_posix())
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"{rel}: not a path inside {root}")
        files[rel.as_posix()] = fingerprint(root / rel)
    record = {"format": AUDIT_FORMAT, "source": str(root), "kind": kind, "class_names": list(class_names),
              "files": dict(sorted(files.items()))}
    path = Path(out_dir) / AUDIT_RECORD
    text = json.dumps(record, indent=1) + "\n"
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    return path


@dataclass(frozen=True)
class AuditRecord:
    """audit.json, read and checked."""

    path: Path  # the record itself, for messages
    source: Path
    kind: str
    class_names: list[str]
    files: dict[str, dict]


def read_audit_record(directory: Path, beside: str) -> AuditRecord:
    """The audit record in `directory` (beside the table `beside`), every field checked: one line naming the file
    and the field when it is missing, damaged or of another format."""
    path = Path(directory) / AUDIT_RECORD
    if not path.is_file():
        raise SmallvisionError(f"{directory}: no {AUDIT_RECORD} beside {beside}; apply checks every file against "
                               f"the fingerprints the audit keeps there: audit again")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise SmallvisionError(f"{path}: damaged ({str(err).splitlines()[0]}): audit again") from None

    def problem(what: str) -> SmallvisionError:
        return SmallvisionError(f"{path}: {what}: audit again")

    if not isinstance(data, dict):
        raise problem("not a JSON object")
    if data.get("format") != AUDIT_FORMAT:
        raise problem(f"format {data.get('format')!r}, not {AUDIT_FORMAT!r} (written by another smallvision, or "
                      f"not an audit record)")
    source, kind, names, files = (data.get(key) for key in ("source", "kind", "class_names", "files"))
    if not isinstance(source, str) or not os.path.isabs(source):
        raise problem(f"'source' must be the absolute path of the audited folder, not {source!r}")
    if kind not in KINDS:
        raise problem(f"'kind' must be one of {', '.join(KINDS)}, not {kind!r}")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise problem("'class_names' must be a list of class names")
    if not isinstance(files, dict):
        raise problem("'files' must map each relative path to its fingerprint")
    for rel, print_ in files.items():
        if not (isinstance(print_, dict) and isinstance(print_.get("size"), int)
                and isinstance(print_.get("mtime_ns"), int) and isinstance(print_.get("sha1"), str)):
            raise problem(f"files[{rel!r}] must be {{'size': int, 'mtime_ns': int, 'sha1': hex}}")
    return AuditRecord(path, Path(source), kind, names, files)


# ---- the tables ----

@dataclass
class Row:
    """One row of a table, its action read (lower case, spaces stripped; "" when the user gave none)."""

    line: int  # the line in the CSV file, for messages
    path: str
    action: str
    label: str = ""
    suggested: str = ""
    group: str = ""


@dataclass
class Table:
    path: Path
    kind: str  # "label_issues" or "near_duplicates", told apart by the header
    rows: list[Row]

    def where(self, row: Row) -> str:
        return f"{self.path} line {row.line}"


def read_table(path: Path) -> Table:
    """A label_issues.csv or near_duplicates.csv: the kind by its header (columns a spreadsheet added are ignored),
    every action checked against that kind's (the nearest valid one named when it is not one)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:  # -sig: a spreadsheet's byte-order mark
            reader = csv.reader(file)
            header = [name.strip().lower() for name in next(reader, [])]
            kind = next((k for k, columns in COLUMNS.items() if set(columns) <= set(header)), None)
            if kind is None:
                expected = " or ".join(f"{','.join(c)} ({k}.csv)" for k, c in COLUMNS.items())
                raise SmallvisionError(f"{path}: not an audit table: its header is {','.join(header) or 'empty'}, "
                                       f"expected {expected}")
            index = {name: header.index(name) for name in COLUMNS[kind]}
            table = Table(path, kind, [])
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue
                value = {name: cells[i].strip() if i < len(cells) else "" for name, i in index.items()}
                row = Row(reader.line_num, value["path"], value["action"].lower(), value.get("label", ""),
                          value.get("suggested", ""), value.get("group", ""))
                check_action(table, row)
                table.rows.append(row)
    except FileNotFoundError:
        raise SmallvisionError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SmallvisionError(f"{path}: unreadable ({err})") from None
    return table


def check_action(table: Table, row: Row) -> None:
    valid = ACTIONS[table.kind]
    if row.action == "" or row.action in valid:
        return
    if row.action == "relabel":
        what = "near duplicates (a duplicate" if table.kind == "near_duplicates" else "outliers (an outlier"
        raise SmallvisionError(f"{table.where(row)}: 'relabel' is not an action for {what} has no suggested "
                               f"class): use remove or keep")
    raise SmallvisionError(f"{table.where(row)}: {unknown_name('action', row.action, list(valid))}")


def decide_actions(table: Table, accept_all: bool) -> list[tuple[Row, str]]:
    """Each row with the action it asks for: its own, or "" for none. With `accept_all` an empty action is the
    audit's suggestion: in label_issues.csv `relabel` (to the suggested class); in near_duplicates.csv `remove`
    for every member of a group but the one kept, the group's first row whose action is empty or `keep` (the
    first row of the group, unless the user marked that one `remove`: accepting all never empties a group the
    user did not empty), which becomes `keep`. The audit suggests nothing for an outlier (unusual is not
    wrong), so in outliers.csv an empty action stays empty."""
    if not accept_all or table.kind == "outliers":
        return [(row, row.action) for row in table.rows]
    if table.kind == "label_issues":
        return [(row, row.action or "relabel") for row in table.rows]
    kept_in: dict[str, int] = {}
    for row in table.rows:
        if not row.group:  # else every row without one would be a single group, all but one of it removed
            raise SmallvisionError(f"{table.where(row)}: no group; accepting all keeps one file a group, so "
                                   f"every row needs its group")
        if row.action != "remove" and row.group not in kept_in:
            kept_in[row.group] = row.line
    return [(row, row.action or ("keep" if kept_in[row.group] == row.line else "remove")) for row in table.rows]


# ---- paths ----

def checked_relpath(text: str, where: str) -> str:
    """A table's or journal's path as a POSIX path relative to the root: refused when empty, absolute or
    climbing out with `..` (before anything is looked up on disk)."""
    if not text:
        raise SmallvisionError(f"{where}: no path")
    rel = PurePosixPath(text)
    if rel.is_absolute() or os.path.isabs(text):
        raise SmallvisionError(f"{where}: {text} is an absolute path; the tables name files relative to the "
                               f"audited folder")
    if ".." in rel.parts:
        raise SmallvisionError(f"{where}: {text} contains '..'; the tables name files inside the audited folder")
    return rel.as_posix()


def inside(root: Path, rel: str, where: str) -> Path:
    """ROOT/rel, refused when it resolves outside the root (through a symbolic link, on the way or at the end)."""
    path = root / rel
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(Path(os.path.realpath(root))):
        raise SmallvisionError(f"{where}: {rel} resolves outside {root} (to {real}, through a symbolic link); "
                               f"only files inside the audited folder are moved")
    return path


def existing_ancestor(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def missing_folders(root: Path, folder: Path) -> list[str]:
    """The folders from `folder` up that are not there, outermost first, relative to the root: what a move into
    `folder` will create, and what `undo` may remove again once they are empty."""
    missing = []
    while not folder.exists() and folder != root:
        missing.append(folder.relative_to(root).as_posix())
        folder = folder.parent
    return missing[::-1]


def refuse_unwritable(folders, what: str) -> None:
    """Check every folder a plan touches (and the journal) before the first move: a read-only one refuses the
    whole plan."""
    for folder in sorted(set(folders)):
        if not os.access(folder, os.W_OK | (os.X_OK if os.path.isdir(folder) else 0)):
            raise SmallvisionError(f"{folder}: not writable, so {what}: nothing was moved (make it writable, "
                                   f"e.g. chmod u+w, then try again)")


def same_content(path: Path, content: tuple) -> bool:
    """Whether `path` holds `content`: ("file", size, sha1) (hashed only when the size agrees), or ("link",
    target) for a symbolic link, which is moved as a link."""
    if content[0] == "link":
        return os.path.islink(path) and os.readlink(path) == content[1]
    if os.path.islink(path) or not path.is_file() or path.stat().st_size != content[1]:
        return False
    return fingerprint(path)["sha1"] == content[2]


# ---- the journal ----

@dataclass
class JournalMove:
    """A move as the journal records it: announced (`op` "move") and, once made, confirmed (`op` "done")."""

    source: str
    target: str
    size: int
    sha1: str
    link: str | None  # a symbolic link's target: a link is moved (and checked) as the link
    made: list[str]  # the folders the move created, outermost first
    done: bool = False
    undoing: bool = False  # `undo_last` announced putting it back (the file's place says whether it did)
    undone: bool = False  # ... and confirmed it: the move is history, not work for the next undo

    @property
    def content(self) -> tuple:
        return ("link", self.link) if self.link is not None else ("file", self.size, self.sha1)


def read_journal(path: Path) -> list[JournalMove]:
    """The journal's moves in the order they were made, each checked. A last line without its newline was cut
    short by a crash while it was written, and is left out: an announcement is on disk before its move is made,
    and a missing confirmation only makes undo look at which side the file is on. Any other unreadable line
    refuses."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SmallvisionError(f"{path}: unreadable ({err.strerror or err})") from None
    lines = data.decode("utf-8", errors="replace").split("\n")[:-1]  # [-1]: "" or cut short
    moves: list[JournalMove] = []
    announced: dict[tuple[str, str], JournalMove] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise SmallvisionError(f"{where}: damaged (not JSON); the journal must be whole for undo to be "
                                   f"sure: restore that line or move the files back by hand") from None
        if not isinstance(entry, dict) or entry.get("op") not in ("move", "done", "undo", "undone"):
            raise SmallvisionError(f"{where}: not a journal entry (expected op 'move', 'done', 'undo' or 'undone')")
        source, target = (checked_relpath(entry.get(key) if isinstance(entry.get(key), str) else "", where)
                          for key in ("from", "to"))
        if entry["op"] != "move":
            if (source, target) not in announced:
                raise SmallvisionError(f"{where}: a move from {source} to {target} {entry['op']} but never announced")
            move = announced[(source, target)]
            move.done |= entry["op"] == "done"
            move.undoing |= entry["op"] == "undo"
            move.undone |= entry["op"] == "undone"
            continue
        size, sha1, link, made = entry.get("size"), entry.get("sha1"), entry.get("link"), entry.get("made", [])
        if not (isinstance(size, int) and isinstance(sha1, str) and (link is None or isinstance(link, str))
                and isinstance(made, list) and all(isinstance(m, str) for m in made)):
            raise SmallvisionError(f"{where}: a move entry needs size, sha1 and made (a list of folders)")
        move = JournalMove(source, target, size, sha1, link, [checked_relpath(m, where) for m in made])
        moves.append(move)
        announced[(source, target)] = move
    return moves


@contextmanager
def journal_for_appending(path: Path) -> Iterator[BinaryIO]:
    """The journal, open to append to. A last line cut short by a crash is dropped first (`read_journal` leaves
    it out too), so that what is appended starts a line of its own."""
    new = not path.exists()
    with open(path, "ab") as file:
        if new:
            sync_folder(path.parent)  # the journal's name itself survives a crash
        else:
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                file.truncate(data.rfind(b"\n") + 1)
        yield file


def append_entry(file: BinaryIO, entry: dict) -> None:
    """One entry, on disk before this returns: a move is announced durably before it is made."""
    file.write((json.dumps(entry) + "\n").encode("utf-8"))
    file.flush()
    os.fsync(file.fileno())


def sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError:  # not every filesystem syncs a folder; the journal's own fsync is what counts
        pass
    finally:
        os.close(descriptor)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---- apply ----

@dataclass
class Move:
    """A move a table asks for, planned and checked."""

    row: Row
    action: str  # "relabel" or "remove"
    source: str
    target: str
    done_before: bool = False  # already where an earlier apply of the same action put it
    fingerprint: dict = field(default_factory=dict)
    link: str | None = None
    origin: dict = field(default_factory=dict)  # what asked for it, for the journal: a table's line, or the studio


@dataclass
class ApplyReport:
    table: Path
    journal: Path
    relabelled: int = 0
    removed: int = 0
    kept: int = 0
    already_done: int = 0  # rows whose file an earlier apply already moved where this one would
    skipped: int = 0  # rows without an action
    dry_run: bool = False

    def summary(self) -> str:
        verbs = ("would relabel", "would remove") if self.dry_run else ("relabelled", "removed")
        counts = (f"{verbs[0]} {self.relabelled}, {verbs[1]} {self.removed}, kept {self.kept}, "
                  f"already done {self.already_done}, no action {self.skipped}")
        if self.dry_run:
            return f"{self.table.name}: {counts} (dry run: nothing moved)"
        return f"{self.table.name}: {counts}; every move is in {self.journal}"


def apply_actions(table: str | Path, accept_all: bool = False, dry_run: bool = False) -> ApplyReport:
    """Apply a table's actions to the audited folder (see the module's docstring; `decide_actions` for
    `accept_all`). Every row is checked before anything moves; `dry_run` checks them all and moves nothing. A row
    whose file an earlier apply already moved where this one would counts as already done, so applying twice
    changes nothing the second time."""
    table = read_table(Path(table))
    audit = read_audit_record(table.path.parent, table.path.name)
    if audit.kind == "idx":
        raise SmallvisionError(f"{audit.path}: the audited source is IDX files; an IDX source's images are not "
                               f"files: nothing to move")
    root = audit.source
    if not root.is_dir():
        raise SmallvisionError(f"{root}: the audited folder (named in {audit.path}) is not there")
    journal = root / JOURNAL
    report = ApplyReport(table.path, journal, dry_run=dry_run)
    moves = plan_moves(table, audit, decide_actions(table, accept_all), report)
    history = read_journal(journal) if journal.exists() else []
    pending = [move for move in moves if not locate(root, move, history, table)]
    report.already_done = len(moves) - len(pending)
    check_pending(root, audit, table, pending)
    if pending:
        refuse_unwritable([root] + [folder for move in pending for folder in touched_folders(root, move)],
                          "the moves cannot be made")
        if journal.exists():
            refuse_unwritable([journal], "the journal cannot be written")
    report.relabelled = sum(move.action == "relabel" for move in pending)
    report.removed = sum(move.action == "remove" for move in pending)
    if not dry_run and pending:
        make_moves(root, journal, pending)
    return report


def plan_moves(table: Table, audit: AuditRecord, decided: list[tuple[Row, str]], report: ApplyReport) -> list[Move]:
    """The moves the rows ask for (counting the rows kept and those without an action), their paths checked and
    the relabels' classes known; a file that two rows would treat differently refuses the table."""
    for row, _ in decided:
        row.path = checked_relpath(row.path, table.where(row))
    for row, action in decided:
        if action == "relabel" and not row.suggested:
            raise SmallvisionError(f"{table.where(row)}: relabel, but no suggested class: name one of "
                                   f"{', '.join(audit.class_names)}")
        if action == "relabel" and row.suggested not in audit.class_names:
            raise SmallvisionError(f"{table.where(row)}: "
                                   f"{unknown_name('suggested class', row.suggested, audit.class_names)}")
    relabels = [row for row, action in decided if action == "relabel"]
    class_index = class_folder_index(audit) if relabels else 0
    moves: list[Move] = []
    intents: dict[str, tuple[Row, str]] = {}  # path -> the first row about it and what it asks
    for row, action in decided:
        if action == "":
            report.skipped += 1
            continue
        if action == "keep":
            target = row.path
            report.kept += 1
        elif action == "remove":
            target = f"{REMOVED}/{row.path}"
        else:
            target = relabelled_path(table, row, class_index, audit.class_names)
        earlier = intents.setdefault(row.path, (row, target))
        if earlier[1] != target:
            raise SmallvisionError(f"{table.where(row)}: {row.path} is also in line {earlier[0].line}, which asks "
                                   f"something else of it; one action a file")
        if action != "keep" and earlier[0] is row:
            moves.append(Move(row, action, row.path, target, origin={"table": str(table.path.resolve()),
                                                                     "line": row.line}))
    return moves


def class_folder_index(audit: AuditRecord) -> int:
    """Where the class folder sits in a path: 1 in ROOT/SPLIT/CLASS/..., 0 in ROOT/CLASS/... (the folder reader's
    own reading of the layout), once every audited class is checked to have its folder still (the folder may
    have more: a class without training images is left out of a source, and so of its audit)."""
    from smallvision.data.folders import scan_folder  # imports PyTorch

    scan = scan_folder(audit.source)
    gone = [name for name in audit.class_names if name not in scan.class_names]
    if gone:
        raise SmallvisionError(f"{audit.source}: the audited class{'es' if len(gone) > 1 else ''} "
                               f"{', '.join(gone)} no longer {'have folders' if len(gone) > 1 else 'has a folder'}"
                               f": audit again")
    return 1 if scan.layout == "splits" else 0


def relabelled_path(table: Table, row: Row, class_index: int, class_names: list[str]) -> str:
    """The path of a relabelled file: the class folder replaced by the suggested class's, the rest kept."""
    parts = row.path.split("/")
    if len(parts) <= class_index + 1 or parts[class_index] not in class_names \
            or parts[class_index] != (row.label or parts[class_index]):
        raise SmallvisionError(f"{table.where(row)}: {row.path} is not in a class folder"
                               f"{f' of its label {row.label!r}' if row.label else ''}; the table does not match "
                               f"the folder: audit again")
    if row.suggested == parts[class_index]:
        raise SmallvisionError(f"{table.where(row)}: relabel {row.path} to {row.suggested!r}, the class it is "
                               f"already in; keep it, or name another class")
    parts[class_index] = row.suggested
    return "/".join(parts)


def locate(root: Path, move: Move, history: list[JournalMove], table: Table) -> bool:
    """Whether an earlier apply already made this move (True), or the file is still where the audit saw it
    (False); refused when it is neither, or when an earlier apply moved it elsewhere."""
    where = table.where(move.row)
    if os.path.lexists(root / move.source):
        return False
    earlier = next((m for m in reversed(history) if m.source == move.source and not m.undone), None)
    if earlier is None:
        raise SmallvisionError(f"{where}: {root / move.source} is missing, and the journal does not say it was "
                               f"moved: audit again")
    if earlier.target != move.target:
        raise SmallvisionError(f"{where}: {move.source} was moved to {earlier.target} by an earlier apply; undo "
                               f"first to change what happens to it")
    if not os.path.lexists(root / move.target):
        raise SmallvisionError(f"{where}: {move.source} was moved to {move.target} by an earlier apply, and "
                               f"neither is there now")
    move.done_before = True
    return True


def check_pending(root: Path, audit: AuditRecord, table: Table, pending: list[Move]) -> None:
    """Every move still to make: both ends inside the root, the file as the audit saw it, the target free."""
    targets: dict[str, Move] = {}
    for move in pending:
        where = table.where(move.row)
        source = inside(root, move.source, where)
        inside(root, move.target, where)
        if not source.is_file():
            raise SmallvisionError(f"{where}: {source} is not a file")
        audited = audit.files.get(move.source)
        if audited is None:
            raise SmallvisionError(f"{where}: {move.source} is not in {audit.path}: audit again")
        move.fingerprint = fingerprint(source)
        changed = [key for key in ("size", "mtime_ns", "sha1") if move.fingerprint[key] != audited[key]]
        if changed:
            raise SmallvisionError(f"{where}: {source} changed since the audit (its {' and '.join(changed)} "
                                   f"differ{'s' if len(changed) == 1 else ''}): audit again")
        move.link = os.readlink(source) if os.path.islink(source) else None
        target = root / move.target
        if os.path.lexists(target) or move.target in targets:
            verb = f"relabel {move.source} to {move.row.suggested!r}" if move.action == "relabel" \
                else f"remove {move.source}"
            by = f"line {targets[move.target].row.line} moves a file there too" if move.target in targets \
                else "it already exists"
            raise SmallvisionError(f"{where}: cannot {verb}: {target}: {by} (nothing is ever overwritten); rename "
                                   f"one of them, then apply again")
        targets[move.target] = move


def touched_folders(root: Path, move: Move) -> list[Path]:
    """The folders a move writes in: the one it leaves, and the one it enters or the nearest that is there."""
    return [(root / move.source).parent, existing_ancestor((root / move.target).parent)]


def make_moves(root: Path, journal: Path, pending: list[Move]) -> None:
    """The moves, each announced in the journal before it is made and confirmed after."""
    made, doing = 0, f"opening the journal {journal}"
    try:
        with journal_for_appending(journal) as file:
            for move in pending:
                source, target = root / move.source, root / move.target
                doing = f"moving {source} to {target}"
                entry = {"op": "move", "from": move.source, "to": move.target, "size": move.fingerprint["size"],
                         "sha1": move.fingerprint["sha1"], "action": move.action, **move.origin,
                         "made": missing_folders(root, target.parent), "at": now()}
                if move.link is not None:
                    entry["link"] = move.link
                append_entry(file, entry)
                target.parent.mkdir(parents=True, exist_ok=True)
                if os.path.lexists(target):  # appeared since the check: still never overwritten
                    raise FileExistsError(0, "appeared since the check", str(target))
                os.rename(source, target)
                made += 1
                append_entry(file, {"op": "done", "from": move.source, "to": move.target, "at": now()})
    except OSError as err:
        raise SmallvisionError(f"{doing} failed ({err.strerror or err}): {made} of {len(pending)} moves made, each "
                               f"in the journal; undo puts them back") from None


# ---- one photo at a time ----

def fix_photo(root: str | Path, path: str, action: str, to_class: str | None = None,
              by: str = "studio") -> JournalMove:
    """Relabel one photo of the folder `root` (into `to_class`'s folder of the same split, the path below the
    class folder kept) or remove it (into ROOT/.smallvision-removed/), through the journal as `apply_actions`
    moves: announced, made, confirmed; nothing overwritten. The photo is judged as it is now (a person is
    looking at it), so there is no audit fingerprint to compare; the journal keeps its size and SHA-1 for undo.
    Returns the move as the journal now records it."""
    from smallvision.data.folders import scan_folder  # imports PyTorch

    root = Path(root)
    if not root.is_dir():
        raise SmallvisionError(f"{root}: no such directory")
    rel = checked_relpath(path, str(root))
    where = str(root / rel)
    if action not in ("relabel", "remove"):
        raise SmallvisionError(f"{where}: {unknown_name('action', action, ['relabel', 'remove'])}")
    source = inside(root, rel, where)
    if not os.path.isfile(source):
        raise SmallvisionError(f"{where}: not a file here (moved or removed meanwhile?): reload the page")
    if rel.split("/")[0] == REMOVED:
        raise SmallvisionError(f"{where}: already removed; undo puts it back")
    scan = scan_folder(root)
    class_index = 1 if scan.layout == "splits" else 0
    parts = rel.split("/")
    if len(parts) <= class_index + 1 or parts[class_index] not in scan.class_names:
        raise SmallvisionError(f"{where}: not in a class folder of {root.name} "
                               f"({', '.join(scan.class_names)})")
    if action == "relabel":
        if not to_class:
            raise SmallvisionError(f"{where}: relabel to which class? one of {', '.join(scan.class_names)}")
        if to_class not in scan.class_names:
            raise SmallvisionError(f"{where}: {unknown_name('class', to_class, scan.class_names)}")
        if to_class == parts[class_index]:
            raise SmallvisionError(f"{where}: already in {to_class!r}")
        parts[class_index] = to_class
        target = "/".join(parts)
    else:
        target = f"{REMOVED}/{rel}"
    inside(root, target, where)
    if os.path.lexists(root / target):
        raise SmallvisionError(f"{where}: cannot {action} it: {root / target} already exists (nothing is ever "
                               f"overwritten); rename one of them first")
    journal = root / JOURNAL
    move = Move(Row(0, rel, action, suggested=to_class or ""), action, rel, target, fingerprint=fingerprint(source),
                link=os.readlink(source) if os.path.islink(source) else None, origin={"by": by})
    refuse_unwritable([root, *touched_folders(root, move), *([journal] if journal.exists() else [])],
                      "the photo cannot be moved")
    made = missing_folders(root, (root / target).parent)
    make_moves(root, journal, [move])
    return JournalMove(rel, target, move.fingerprint["size"], move.fingerprint["sha1"], move.link, made, done=True)


def journal_moves(root: str | Path) -> list[JournalMove]:
    """The moves of the folder's journal that undo would still put back, newest first ([] without a journal)."""
    journal = Path(root) / JOURNAL
    if not journal.is_file():
        return []
    return [move for move in reversed(read_journal(journal)) if not move.undone]


def undo_last(root: str | Path, count: int = 1) -> list[JournalMove]:
    """Put back the newest `count` moves not yet undone, byte for byte, as `undo` does (everything checked
    before the first file moves), and mark each in the journal: announced before the file moves, confirmed
    after, so the next `undo_last` goes on with the move before it and `undo` skips them. The journal stays.
    Returns the moves put back, newest first (a move a crash kept from being made is only marked)."""
    root = Path(root)
    journal = existing_journal(root, "moved")
    chosen = journal_moves(root)[:count]
    if not chosen:
        raise SmallvisionError(f"{root}: every move in its journal is undone already")
    restores = plan_undo(root, journal, chosen[::-1])
    refuse_unwritable([root, journal, *undo_folders(root, restores)], "the files cannot be put back")
    put_back = []
    with journal_for_appending(journal) as file:
        for move in chosen:
            entry = {"from": move.source, "to": move.target}
            if any(move is restore for restore in restores):
                append_entry(file, {"op": "undo", **entry, "at": now()})
                put_back_file(root, move, len(put_back))
                put_back.append(move)
            append_entry(file, {"op": "undone", **entry, "at": now()})
    remove_made_folders(root, chosen)
    return put_back


# ---- undo ----

@dataclass
class UndoReport:
    root: Path
    restored: int = 0
    not_made: int = 0  # moves announced that a crash kept from being made (or already put back)
    folders_removed: int = 0
    journal: Path | None = None  # the journal, kept as history under its undone name

    def summary(self) -> str:
        extra = f", {self.not_made} announced but never made" if self.not_made else ""
        return (f"{self.root}: put back {self.restored} file{'s' if self.restored != 1 else ''}{extra}; the journal "
                f"is kept as {self.journal.name if self.journal else 'nothing'}")


def undo(root: str | Path) -> UndoReport:
    """Put back every move the journal records, newest first, byte for byte (each file checked against its
    recorded size and SHA-1, and every place it goes back to free, before the first moves), remove the folders
    the moves created once empty, and rename the journal `.smallvision-journal-undone-TIME.jsonl`, so that the
    next undo finds nothing to undo."""
    root = Path(root)
    journal = existing_journal(root, "applied")
    moves = read_journal(journal)
    restores = plan_undo(root, journal, moves)
    refuse_unwritable([root, *undo_folders(root, restores)], "the files cannot be put back")
    report = UndoReport(root, not_made=len(moves) - len(restores))
    for move in restores:
        put_back_file(root, move, report.restored)
        report.restored += 1
    report.folders_removed = remove_made_folders(root, moves)
    report.journal = retire_journal(journal)
    return report


def existing_journal(root: Path, done: str) -> Path:
    """The folder's journal, or the line that says there is nothing to undo (`done`: what would have made one)."""
    if not root.is_dir():
        raise SmallvisionError(f"{root}: no such directory")
    journal = root / JOURNAL
    if not journal.is_file():
        raise SmallvisionError(f"{root}: no journal ({JOURNAL}): nothing was {done} here, nothing to undo")
    return journal


def undo_folders(root: Path, restores: list[JournalMove]) -> list[Path]:
    """The folders putting these moves back writes in: the one each file leaves, and the one it goes back to
    or the nearest that is there."""
    return [folder for move in restores
            for folder in ((root / move.target).parent, existing_ancestor((root / move.source).parent))]


def put_back_file(root: Path, move: JournalMove, restored: int) -> None:
    """One move reversed (its place checked free again at the last moment: never overwritten); `restored`:
    how many were put back before it, for the message when this one fails."""
    source, target = root / move.source, root / move.target
    try:
        source.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(source):
            raise FileExistsError(0, "appeared since the check", str(source))
        os.rename(target, source)
    except OSError as err:
        raise SmallvisionError(f"putting {target} back at {source} failed ({err.strerror or err}): "
                               f"{restored} put back; undo again once that is fixed") from None


def plan_undo(root: Path, journal: Path, moves: list[JournalMove]) -> list[JournalMove]:
    """The moves to reverse, newest first, each checked against the folder as the reversals before it will
    leave it: its file at `to` as recorded, and `from` free. A move whose file is back at `from` and gone from
    `to` was never made (a crash after its announcement) and is left alone."""
    state: dict[str, tuple | None] = {}  # path -> its content once the planned reversals are made; None: empty

    def there(rel: str) -> bool:
        return state[rel] is not None if rel in state else os.path.lexists(root / rel)

    restores = []
    for move in reversed(moves):
        if move.undone:  # put back by `undo_last` already
            continue
        where = f"{journal}: the move of {move.source} to {move.target}"
        inside(root, move.source, where)
        inside(root, move.target, where)
        at_target, at_source = there(move.target), there(move.source)
        if at_source and not at_target:
            continue
        if not at_target:
            raise SmallvisionError(f"{root / move.target} is missing, so it cannot be put back at {move.source}: "
                                   f"nothing was moved; put the file back there, then undo again")
        if at_source:
            raise SmallvisionError(f"{root / move.source} is taken, so {move.target} cannot be put back there "
                                   f"(nothing is ever overwritten): nothing was moved; move that file away, "
                                   f"then undo again")
        known = state.get(move.target)
        if not (known == move.content if known is not None else same_content(root / move.target, move.content)):
            raise SmallvisionError(f"{root / move.target} changed since it was moved there (its size or SHA-1 "
                                   f"differs from the journal's): nothing was moved; put the original back, then "
                                   f"undo again")
        state[move.target], state[move.source] = None, move.content
        restores.append(move)
    return restores


def remove_made_folders(root: Path, moves: list[JournalMove]) -> int:
    """Remove the folders the moves created that are empty now, deepest first; never one they did not create."""
    removed = 0
    for rel in sorted({rel for move in moves for rel in move.made}, key=lambda r: (-r.count("/"), r)):
        try:
            os.rmdir(root / rel)
            removed += 1
        except OSError:  # not empty (something else is in it now), or already gone
            pass
    return removed


def retire_journal(journal: Path) -> Path:
    """Rename the journal so it is history, not work to undo (never over an earlier undone journal)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1000):
        name = f".smallvision-journal-undone-{stamp}{f'-{attempt}' if attempt else ''}.jsonl"
        kept = journal.with_name(name)
        if not os.path.lexists(kept):
            os.rename(journal, kept)
            return kept
    raise SmallvisionError(f"{journal.parent}: too many undone journals named for {stamp}")
