"""Fixes to an image folder that lose nothing: an audit's tables applied as journalled moves, and undone."""

import csv
import hashlib
import json
import os
import random
import re
from pathlib import Path

import pytest

from smallvision import journal
from smallvision.errors import SmallvisionError
from smallvision.journal import JOURNAL, REMOVED, apply_actions, fingerprint, undo, write_audit_record

FILES = {"splits": ["train/cats/c0.png", "train/cats/c1.png", "train/cats/a/deep.png", "train/dogs/d0.png",
                    "train/dogs/d1.png", "validation/cats/c2.png", "validation/dogs/d2.png"],
         "classes": ["cats/c0.png", "cats/c1.png", "cats/a/deep.png", "dogs/d0.png", "dogs/d1.png"]}
UNDONE = re.compile(r"\.smallvision-journal-undone-\d{8}T\d{6}Z(-\d+)?\.jsonl")


def write_bytes(path: Path, seed: int, size: int = 48) -> None:
    """Random bytes under an image suffix: the journal never decodes a file, it only moves and hashes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))


def tree(root: Path) -> dict[str, str]:
    """Every file under `root`, hidden ones too, by its SHA-1."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            found[path.relative_to(root).as_posix()] = hashlib.sha1(path.read_bytes()).hexdigest()
    return found


def make_folder(tmp_path: Path, layout: str) -> tuple[Path, Path]:
    """A tiny image folder in `layout` and an audit of it: (root, the audit's folder)."""
    root = tmp_path / "pets"
    for seed, rel in enumerate(FILES[layout]):
        write_bytes(root / rel, seed)
    out = tmp_path / "audit"
    out.mkdir()
    write_audit_record(out, root, "folder", ["cats", "dogs"], FILES[layout])
    return root, out


def write_table(out: Path, kind: str, rows: list[dict]) -> Path:
    columns = journal.COLUMNS[kind]
    path = out / f"{kind}.csv"
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(column, "") for column in columns])
    return path


def issue(path: str, label: str, suggested: str, action: str = "") -> dict:
    return {"path": path, "split": "train", "label": label, "suggested": suggested, "score": "0.9", "action": action}


def duplicate(group: str, path: str, action: str = "") -> dict:
    return {"group": group, "path": path, "split": "train", "similarity": "0.99", "action": action}


@pytest.fixture(params=["splits", "classes"])
def folder(tmp_path, request):
    """(root, audit folder, the train split's prefix) in either layout."""
    root, out = make_folder(tmp_path, request.param)
    return root, out, "train/" if request.param == "splits" else ""


@pytest.fixture
def splits(tmp_path):
    return make_folder(tmp_path, "splits")


def test_apply_moves_exactly_the_files_asked_and_the_reader_sees_the_new_labels(folder):
    from smallvision.data.folders import scan_folder

    root, out, t = folder
    before = tree(root)
    table = write_table(out, "label_issues", [
        issue(f"{t}cats/a/deep.png", "cats", "dogs", " Relabel "),
        issue(f"{t}cats/c1.png", "cats", "dogs", "REMOVE"),
        issue(f"{t}dogs/d0.png", "dogs", "cats", "keep"),
        issue(f"{t}dogs/d1.png", "dogs", "cats", ""),
    ])
    report = apply_actions(table)
    assert (report.relabelled, report.removed, report.kept, report.already_done, report.skipped) == (1, 1, 1, 0, 1)
    expected = dict(before)
    expected[f"{t}dogs/a/deep.png"] = expected.pop(f"{t}cats/a/deep.png")
    expected[f"{REMOVED}/{t}cats/c1.png"] = expected.pop(f"{t}cats/c1.png")
    after = tree(root)
    assert {k: v for k, v in after.items() if k != JOURNAL} == expected
    assert "relabelled 1, removed 1, kept 1, already done 0, no action 1" in report.summary()

    entries = [json.loads(line) for line in (root / JOURNAL).read_text().splitlines()]
    assert [e["op"] for e in entries] == ["move", "done", "move", "done"]
    first = entries[0]
    assert (first["from"], first["to"], first["action"]) == (f"{t}cats/a/deep.png", f"{t}dogs/a/deep.png", "relabel")
    assert (first["size"], first["sha1"]) == (48, before[f"{t}cats/a/deep.png"])
    assert first["made"] == [f"{t}dogs/a"] and first["table"] == str(table.resolve()) and first["line"] == 2
    assert entries[2]["made"] == ([REMOVED, f"{REMOVED}/train", f"{REMOVED}/train/cats"] if t
                                  else [REMOVED, f"{REMOVED}/cats"])  # what undo may remove again

    scan = scan_folder(root)
    train = dict(scan.files["train"])
    assert train[f"{t}dogs/a/deep.png"] == scan.class_names.index("dogs")
    assert f"{t}cats/a/deep.png" not in train and not any("c1.png" in path for path in train)
    assert f"{t}dogs/d0.png" in train and len(train) == 4


def test_apply_then_undo_restores_the_tree_byte_for_byte(folder):
    root, out, t = folder
    before = tree(root)
    apply_actions(write_table(out, "label_issues", [issue(f"{t}cats/a/deep.png", "cats", "dogs", "relabel"),
                                                    issue(f"{t}dogs/d0.png", "dogs", "cats", "relabel")]))
    apply_actions(write_table(out, "near_duplicates", [duplicate("1", f"{t}cats/c0.png", "keep"),
                                                       duplicate("1", f"{t}cats/c1.png", "remove")]))
    assert tree(root) != before

    report = undo(root)
    assert (report.restored, report.not_made) == (3, 0)
    after = tree(root)
    undone = [name for name in after if UNDONE.fullmatch(name)]
    assert len(undone) == 1 and report.journal == root / undone[0]
    del after[undone[0]]
    assert after == before
    assert not (root / REMOVED).exists() and not (root / t / "dogs" / "a").exists()  # created by apply, now empty
    assert (root / t / "cats" / "a").is_dir()  # was there before: left alone
    assert "put back 3 files" in report.summary()

    with pytest.raises(SmallvisionError, match="no journal .*nothing to undo"):
        undo(root)
    again = apply_actions(out / "near_duplicates.csv")  # renames keep mtimes: the audit still holds
    assert again.removed == 1


def test_applying_twice_changes_nothing_the_second_time(splits):
    root, out = splits
    table = write_table(out, "label_issues", [issue("train/cats/c0.png", "cats", "dogs", "relabel"),
                                              issue("train/dogs/d1.png", "dogs", "cats", "remove"),
                                              issue("train/dogs/d0.png", "dogs", "cats", "keep")])
    apply_actions(table)
    first, journal_text = tree(root), (root / JOURNAL).read_text()
    second = apply_actions(table)
    assert (second.relabelled, second.removed, second.kept, second.already_done) == (0, 0, 1, 2)
    assert tree(root) == first and (root / JOURNAL).read_text() == journal_text


def test_a_file_changed_since_the_audit_is_refused_and_nothing_moves(splits):
    root, out = splits
    changed = root / "train/dogs/d1.png"
    stat = changed.stat()
    changed.write_bytes(random.Random(99).randbytes(48))  # same size,
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same time: only the bytes tell
    before = tree(root)
    table = write_table(out, "label_issues", [issue("train/cats/c0.png", "cats", "dogs", "relabel"),
                                              issue("train/dogs/d1.png", "dogs", "cats", "relabel")])
    with pytest.raises(SmallvisionError, match=r"line 3: .*d1\.png changed since the audit \(its sha1 differs\): "
                                               r"audit again"):
        apply_actions(table)
    assert tree(root) == before and not (root / JOURNAL).exists()


def outside_link(root: Path, out: Path) -> str:
    (root.parent / "elsewhere.png").write_bytes(b"not yours")
    (root / "train/cats/link.png").symlink_to(root.parent / "elsewhere.png")
    write_audit_record(out, root, "folder", ["cats", "dogs"], FILES["splits"] + ["train/cats/link.png"])
    return "train/cats/link.png"


def file_added_after_the_audit(root: Path, out: Path) -> str:
    write_bytes(root / "train/cats/new.png", 7)
    return "train/cats/new.png"


def file_deleted_after_the_audit(root: Path, out: Path) -> str:
    (root / "train/cats/c1.png").unlink()
    return "train/cats/c1.png"


def destination_taken(root: Path, out: Path) -> str:
    write_bytes(root / "train/dogs/c1.png", 8)
    return "train/cats/c1.png"


BAD_ROWS = {
    "unknown action": ([issue("train/cats/c1.png", "cats", "dogs", "relable")],
                       r"label_issues\.csv line 3: unknown action 'relable': did you mean 'relabel'\?"),
    "bad class": ([issue("train/cats/c1.png", "cats", "horses", "relabel")],
                  r"line 3: unknown suggested class 'horses': known: cats, dogs"),
    "class typo": ([issue("train/cats/c1.png", "cats", "Dogs", "relabel")], r"'Dogs': did you mean 'dogs'\?"),
    "no group": ([duplicate("", "train/cats/c1.png")], r"line 3: no group; accepting all keeps one file a group"),
    "dot-dot": ([issue("../x.png", "cats", "dogs", "remove")], r"line 3: \.\./x\.png contains '\.\.'"),
    "absolute": ([issue("/etc/hostname", "cats", "dogs", "remove")], r"line 3: /etc/hostname is an absolute path"),
    "symlink out": ([issue(outside_link, "cats", "dogs", "remove")],
                    r"line 3: train/cats/link\.png resolves outside .*elsewhere\.png"),
    "not audited": ([issue(file_added_after_the_audit, "cats", "dogs", "remove")], r"new\.png is not in .*audit"),
    "missing": ([issue(file_deleted_after_the_audit, "cats", "dogs", "remove")],
                r"c1\.png is missing, and the journal does not say it was moved: audit again"),
    "taken": ([issue(destination_taken, "cats", "dogs", "relabel")],
              (r"cannot relabel train/cats/c1\.png to 'dogs': .*train/dogs/c1\.png: it already exists "
               r"\(nothing is ever overwritten\)")),
    "same class": ([issue("train/cats/c1.png", "cats", "cats", "relabel")], r"the class it is already in"),
    "wrong label": ([issue("train/cats/c1.png", "dogs", "cats", "relabel")], r"not in a class folder of its label"),
    "two actions": ([issue("train/cats/c1.png", "cats", "dogs", "relabel"), issue("train/cats/c1.png", "cats",
                                                                                  "dogs", "remove")],
                    r"line 4: train/cats/c1\.png is also in line 3, which asks something else of it"),
    "relabel a duplicate": ([duplicate("1", "train/cats/c1.png", "relabel")],
                            r"'relabel' is not an action for near duplicates .*use remove or keep"),
    "duplicate typo": ([duplicate("1", "train/cats/c1.png", "remve")], r"did you mean 'remove'\?"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_a_bad_row_refuses_the_whole_table_and_nothing_moves(splits, case):
    root, out = splits
    rows, message = BAD_ROWS[case]
    rows = [dict(row, path=row["path"](root, out) if callable(row["path"]) else row["path"]) for row in rows]
    kind = "near_duplicates" if "group" in rows[0] else "label_issues"
    good = issue("train/dogs/d1.png", "dogs", "cats", "remove") if kind == "label_issues" else \
        duplicate("0", "train/dogs/d1.png", "remove")  # would move, were the table checked row by row
    before = tree(root)
    with pytest.raises(SmallvisionError, match=message):
        apply_actions(write_table(out, kind, [good] + rows), accept_all=case == "no group")
    assert tree(root) == before and not (root / JOURNAL).exists()


def damage_record(out: Path, change) -> None:
    record = json.loads((out / "audit.json").read_text())
    change(record)
    (out / "audit.json").write_text(json.dumps(record))


BAD_INPUTS = {
    "header": (lambda root, out: (out / "label_issues.csv").write_text("file,verdict\nx.png,remove\n"),
               r"not an audit table: its header is file,verdict, expected path,split,label"),
    "no record": (lambda root, out: (out / "audit.json").unlink(), r"no audit\.json beside label_issues\.csv"),
    "damaged record": (lambda root, out: (out / "audit.json").write_text('{"format": '), r"audit\.json: damaged"),
    "other format": (lambda root, out: damage_record(out, lambda r: r.update(format="smallvision-audit/9")),
                     r"format 'smallvision-audit/9', not 'smallvision-audit/1'"),
    "idx": (lambda root, out: damage_record(out, lambda r: r.update(kind="idx")),
            r"an IDX source's images are not files: nothing to move"),
    "bad fingerprint": (lambda root, out: damage_record(out, lambda r: r["files"].update({"a.png": {"size": "1"}})),
                        r"files\['a\.png'\] must be"),
    "no source": (lambda root, out: damage_record(out, lambda r: r.update(source=str(root) + "-gone")),
                  r"pets-gone: the audited folder \(named in .*audit\.json\) is not there"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_a_bad_table_or_audit_record_is_one_line(splits, case):
    root, out = splits
    table = write_table(out, "label_issues", [issue("train/cats/c1.png", "cats", "dogs", "remove")])
    damage, message = BAD_INPUTS[case]
    damage(root, out)
    before = tree(root)
    with pytest.raises(SmallvisionError, match=message) as error:
        apply_actions(table)
    assert "\n" not in str(error.value)
    assert tree(root) == before and not (root / JOURNAL).exists()


def test_undo_without_a_journal_says_so(splits):
    root, _ = splits
    with pytest.raises(SmallvisionError) as error:
        undo(root)
    assert str(error.value) == (f"{root}: no journal (.smallvision-journal.jsonl): nothing was applied here, "
                                f"nothing to undo")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_refuses_with_nothing_moved(splits):
    root, out = splits
    before = tree(root)
    table = write_table(out, "label_issues", [issue("train/cats/c0.png", "cats", "dogs", "relabel"),
                                              issue("train/cats/c1.png", "cats", "dogs", "relabel")])
    (root / "train/dogs").chmod(0o555)
    try:
        with pytest.raises(SmallvisionError, match=r"train/dogs: not writable.*nothing was moved"):
            apply_actions(table)
    finally:
        (root / "train/dogs").chmod(0o755)
    assert tree(root) == before and not (root / JOURNAL).exists()


@pytest.mark.parametrize("read_only", ["train/cats", "train/dogs", "."])
def test_every_folder_a_move_touches_is_checked_for_writing_first(splits, monkeypatch, read_only):
    """The same check as above, by os.access's answer, so that it runs as root too: the folder a file leaves, the
    one it enters, and the root (the journal)."""
    root, out = splits
    before = tree(root)
    table = write_table(out, "label_issues", [issue("train/dogs/d1.png", "dogs", "cats", "remove"),
                                              issue("train/cats/c0.png", "cats", "dogs", "relabel")])
    denied, access = os.path.normpath(root / read_only), os.access
    monkeypatch.setattr(os, "access", lambda path, mode: os.path.normpath(path) != denied and access(path, mode))
    with pytest.raises(SmallvisionError, match=rf"{re.escape(denied)}: not writable, so the moves cannot be made"):
        apply_actions(table)
    assert tree(root) == before and not (root / JOURNAL).exists()


def test_accept_all_relabels_every_issue_without_an_action(splits):
    root, out = splits
    table = write_table(out, "label_issues", [issue("train/cats/c0.png", "cats", "dogs"),
                                              issue("train/dogs/d0.png", "dogs", "cats", "keep"),
                                              issue("validation/dogs/d2.png", "dogs", "cats")])
    before = tree(root)
    assert apply_actions(table).skipped == 2 and tree(root) == before  # without it: nothing asked, nothing done
    report = apply_actions(table, accept_all=True)
    assert (report.relabelled, report.kept, report.skipped) == (2, 1, 0)
    after = tree(root)
    assert after["train/dogs/c0.png"] == before["train/cats/c0.png"]
    assert after["validation/cats/d2.png"] == before["validation/dogs/d2.png"]
    assert after["train/dogs/d0.png"] == before["train/dogs/d0.png"]


def test_accept_all_removes_every_duplicate_but_the_one_kept(splits):
    root, out = splits
    table = write_table(out, "near_duplicates", [
        duplicate("a", "train/cats/c0.png"), duplicate("a", "train/cats/c1.png"),  # the first row kept
        duplicate("b", "train/dogs/d0.png", "remove"), duplicate("b", "train/dogs/d1.png"),  # the user removed the
        duplicate("b", "validation/dogs/d2.png"),                                             # first: the next kept
        duplicate("a", "train/cats/a/deep.png", "keep"),  # a group need not be contiguous; a keep is a keep
    ])
    report = apply_actions(table, accept_all=True)
    assert (report.removed, report.kept, report.skipped) == (3, 3, 0)
    removed = sorted(path[len(REMOVED) + 1:] for path in tree(root) if path.startswith(REMOVED))
    assert removed == ["train/cats/c1.png", "train/dogs/d0.png", "validation/dogs/d2.png"]


def test_a_crash_on_either_side_of_a_move_is_undone_cleanly(splits):
    root, out = splits
    before = tree(root)
    apply_actions(write_table(out, "label_issues", [issue("train/cats/c0.png", "cats", "dogs", "relabel")]))
    with open(root / JOURNAL, "a") as file:
        # announced, then the crash: never moved
        file.write(json.dumps({"op": "move", "from": "train/dogs/d1.png", "to": f"{REMOVED}/train/dogs/d1.png",
                               "size": 48, "sha1": before["train/dogs/d1.png"], "action": "remove", "made": []}) + "\n")
        # announced and moved, then the crash: never confirmed
        file.write(json.dumps({"op": "move", "from": "train/cats/c1.png", "to": f"{REMOVED}/train/cats/c1.png",
                               "size": 48, "sha1": before["train/cats/c1.png"], "action": "remove",
                               "made": [REMOVED, f"{REMOVED}/train", f"{REMOVED}/train/cats"]}) + "\n")
        file.write('{"op": "done", "from": "train/cats/c1')  # cut short mid-line
    (root / REMOVED / "train/cats").mkdir(parents=True)
    os.rename(root / "train/cats/c1.png", root / REMOVED / "train/cats/c1.png")

    again = apply_actions(write_table(out, "near_duplicates", [duplicate("1", "train/cats/c1.png", "remove")]))
    assert (again.removed, again.already_done) == (0, 1)  # the journal explains where c1 went

    report = undo(root)
    assert (report.restored, report.not_made) == (2, 1)
    after = tree(root)
    assert {k: v for k, v in after.items() if not UNDONE.fullmatch(k)} == before
    assert not (root / REMOVED).exists()


def test_undo_refuses_a_changed_file_or_a_taken_place_before_moving_anything(splits):
    root, out = splits
    apply_actions(write_table(out, "label_issues", [issue("train/cats/c0.png", "cats", "dogs", "relabel"),
                                                    issue("train/cats/c1.png", "cats", "dogs", "remove")]))
    applied = tree(root)
    moved = root / REMOVED / "train/cats/c1.png"
    original = moved.read_bytes()
    moved.write_bytes(b"edited")
    with pytest.raises(SmallvisionError, match=rf"{re.escape(str(moved))} changed since it was moved there"):
        undo(root)
    moved.write_bytes(original)
    assert tree(root) == applied  # the relabel, newest but one, was not put back either

    write_bytes(root / "train/cats/c0.png", 50)
    with pytest.raises(SmallvisionError, match=r"train/cats/c0\.png is taken, so train/dogs/c0\.png cannot be put "
                                               r"back there \(nothing is ever overwritten\)"):
        undo(root)
    assert (root / JOURNAL).exists() and (root / REMOVED / "train/cats/c1.png").exists()


def test_a_dry_run_checks_everything_and_moves_nothing(splits):
    root, out = splits
    before = tree(root)
    table = write_table(out, "label_issues", [issue("train/cats/c0.png", "cats", "dogs", "relabel"),
                                              issue("train/cats/c1.png", "cats", "dogs", "remove")])
    report = apply_actions(table, dry_run=True)
    assert (report.relabelled, report.removed) == (1, 1) and "dry run: nothing moved" in report.summary()
    assert tree(root) == before and not (root / JOURNAL).exists()


def test_a_link_inside_the_folder_is_moved_and_put_back_as_a_link(splits):
    root, out = splits
    (root / "train/cats/again.png").symlink_to("c0.png")  # relative: it breaks one folder deeper, and comes back
    write_audit_record(out, root, "folder", ["cats", "dogs"], FILES["splits"] + ["train/cats/again.png"])
    apply_actions(write_table(out, "near_duplicates", [duplicate("1", "train/cats/c0.png", "keep"),
                                                       duplicate("1", "train/cats/again.png", "remove")]))
    assert os.path.islink(root / REMOVED / "train/cats/again.png")
    assert undo(root).restored == 1
    assert os.readlink(root / "train/cats/again.png") == "c0.png"


def test_the_audit_record_holds_every_files_fingerprint(splits, tmp_path):
    root, out = splits
    record = json.loads((out / "audit.json").read_text())
    assert record["format"] == "smallvision-audit/1" and record["source"] == str(root.resolve())
    assert record["kind"] == "folder" and record["class_names"] == ["cats", "dogs"]
    assert sorted(record["files"]) == sorted(FILES["splits"])
    path = root / "train/cats/c0.png"
    assert record["files"]["train/cats/c0.png"] == fingerprint(path) == {
        "size": 48, "mtime_ns": path.stat().st_mtime_ns, "sha1": hashlib.sha1(path.read_bytes()).hexdigest()}
    assert sorted(p.name for p in out.iterdir()) == ["audit.json"]  # written atomically: no temporary left


def test_a_move_that_fails_midway_leaves_a_journal_that_undo_reads(splits, monkeypatch):
    root, out = splits
    before = tree(root)
    table = write_table(out, "label_issues", [issue("train/cats/c0.png", "cats", "dogs", "relabel"),
                                              issue("train/cats/c1.png", "cats", "dogs", "remove")])
    rename, calls = os.rename, []

    def second_fails(source, target):
        calls.append(source)
        if len(calls) == 2:
            raise OSError(18, "Invalid cross-device link")
        rename(source, target)

    monkeypatch.setattr(os, "rename", second_fails)
    with pytest.raises(SmallvisionError, match=r"moving .*c1\.png to .*c1\.png failed \(Invalid cross-device link\): "
                                               r"1 of 2 moves made, each in the journal; undo puts them back"):
        apply_actions(table)
    monkeypatch.undo()
    assert (root / "train/dogs/c0.png").exists() and (root / "train/cats/c1.png").exists()
    assert undo(root).restored == 1
    assert {k: v for k, v in tree(root).items() if not UNDONE.fullmatch(k)} == before


def test_the_module_imports_no_pytorch():
    import subprocess
    import sys

    code = "import sys, smallvision.journal; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_outliers_are_removed_or_kept_as_asked_and_never_by_accepting_all(splits):
    root, out = splits
    rows = [{"path": "train/cats/c0.png", "split": "train", "label": "cats", "score": "0.9", "action": "remove"},
            {"path": "train/dogs/d0.png", "split": "train", "label": "dogs", "score": "0.8", "action": ""}]
    report = apply_actions(write_table(out, "outliers", rows), accept_all=True)
    assert (report.removed, report.skipped) == (1, 1)
    assert (root / REMOVED / "train/cats/c0.png").exists() and (root / "train/dogs/d0.png").exists()
    rows[1]["action"] = "relabel"
    with pytest.raises(SmallvisionError, match=r"'relabel' is not an action for outliers"):
        apply_actions(write_table(out, "outliers", rows))


def test_a_class_the_audit_left_out_does_not_stop_a_relabel_but_a_class_gone_does(splits):
    root, out = splits
    for split in ("train", "validation"):
        (root / split / "birds").mkdir()  # no images: left out of the source, and so of the audit's classes
    table = write_table(out, "label_issues", [issue("train/cats/c0.png", "cats", "dogs", "relabel")])
    assert apply_actions(table, dry_run=True).relabelled == 1
    os.rename(root / "validation/dogs", root / "validation/wolves")
    os.rename(root / "train/dogs", root / "train/wolves")
    with pytest.raises(SmallvisionError, match=r"the audited class dogs no longer has a folder: audit again"):
        apply_actions(table)


# ---- one photo at a time (the studio) ----

@pytest.mark.parametrize("layout", ["splits", "classes"])
def test_photos_fixed_one_at_a_time_are_undone_newest_first_byte_for_byte(tmp_path, layout):
    root, _ = make_folder(tmp_path, layout)
    prefix = "train/" if layout == "splits" else ""
    before = tree(root)
    moved = journal.fix_photo(root, f"{prefix}cats/a/deep.png", "relabel", "dogs")
    assert moved.target == f"{prefix}dogs/a/deep.png" and moved.made == [f"{prefix}dogs/a"]
    journal.fix_photo(root, f"{prefix}dogs/d0.png", "remove")
    assert (root / REMOVED / prefix / "dogs/d0.png").is_file() and not (root / prefix / "dogs/d0.png").exists()
    assert [m.source for m in journal.journal_moves(root)] == [f"{prefix}dogs/d0.png", f"{prefix}cats/a/deep.png"]

    [back] = journal.undo_last(root)  # the newest: the removal
    assert back.source == f"{prefix}dogs/d0.png"
    assert (root / prefix / "dogs/d0.png").is_file() and (root / prefix / "dogs/a/deep.png").is_file()
    [back] = journal.undo_last(root)
    assert back.source == f"{prefix}cats/a/deep.png"
    after = tree(root)
    assert {k: v for k, v in after.items() if not k.startswith(".smallvision")} == before
    assert not (root / prefix / "dogs/a").exists()  # the folder the relabel made is gone again
    assert journal.journal_moves(root) == []
    with pytest.raises(SmallvisionError, match="undone already"):
        journal.undo_last(root)


def test_undo_after_undo_last_puts_back_only_what_is_still_moved(tmp_path):
    root, _ = make_folder(tmp_path, "classes")
    before = tree(root)
    journal.fix_photo(root, "cats/c0.png", "relabel", "dogs")
    journal.fix_photo(root, "cats/c1.png", "relabel", "dogs")
    journal.undo_last(root)
    journal.fix_photo(root, "cats/c1.png", "remove")  # the same photo again, another way
    report = undo(root)
    assert report.restored == 2
    assert {k: v for k, v in tree(root).items() if not k.startswith(".smallvision")} == before


def test_a_photo_fix_is_refused_with_one_line_and_nothing_moved(tmp_path):
    root, _ = make_folder(tmp_path, "classes")
    before = tree(root)
    (root / "dogs/c0.png").write_bytes(b"taken")
    cases = [("cats/c0.png", "relabel", "dogs", "already exists"),
             ("cats/c0.png", "relabel", "cats", "already in 'cats'"),
             ("cats/c0.png", "relabel", "dgos", "dogs"),
             ("cats/c0.png", "relabel", None, "which class"),
             ("cats/c0.png", "move", None, "action"),
             ("cats/nothing.png", "remove", None, "not a file"),
             ("../pets/cats/c0.png", "remove", None, "'..'"),
             ("/etc/passwd", "remove", None, "absolute")]
    for path, action, to, message in cases:
        with pytest.raises(SmallvisionError, match=re.escape(message)):
            journal.fix_photo(root, path, action, to)
    assert tree(root) == {**before, "dogs/c0.png": hashlib.sha1(b"taken").hexdigest()}
    assert not (root / JOURNAL).exists()


def test_undo_last_refuses_when_the_moved_photo_changed(tmp_path):
    root, _ = make_folder(tmp_path, "classes")
    journal.fix_photo(root, "cats/c0.png", "relabel", "dogs")
    (root / "dogs/c0.png").write_bytes(b"edited since")
    with pytest.raises(SmallvisionError, match="changed since it was moved"):
        journal.undo_last(root)
    assert (root / "dogs/c0.png").read_bytes() == b"edited since" and not (root / "cats/c0.png").exists()
    assert len(journal.journal_moves(root)) == 1  # still there to undo once the file is put right
