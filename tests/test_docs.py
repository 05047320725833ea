"""The documentation: the MkDocs site builds with --strict (a broken link, a missing anchor or a page left
out of the nav fails it), the README's links lead somewhere, and every command line the README and the
pages show parses with the real argument parser."""

import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from smallvision.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def docs_required() -> bool:
    """Where the docs must be checked, not skipped: CI (any non-empty CI), or SMALLVISION_REQUIRE_DOCS=1."""
    return bool(os.environ.get("CI")) or os.environ.get("SMALLVISION_REQUIRE_DOCS") == "1"


def test_site_builds_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        message = f"mkdocs is not installed in {sys.executable} (bin/setup-venv installs the docs extra: .[test,docs])"
        if docs_required():
            pytest.fail(f"{message}, and CI or SMALLVISION_REQUIRE_DOCS=1 is set")
        pytest.skip(message)
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=REPO, capture_output=True, text=True, timeout=180,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # Material's banner about its end of life, not ours
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    for page in DOCS.glob("*.md"):  # every page built, the architecture page through its symlink too
        built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), f"{page.name} was not built ({built} is missing)"


def test_readme_links_lead_somewhere():
    """The README is not part of the site, so mkdocs does not check it: its relative links are checked here."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets, "the README links to no page"
    broken = [target for target in targets
              if "://" not in target and not target.startswith("#")
              and not (REPO / target.split("#")[0]).exists()]
    assert not broken, f"README.md links to files that do not exist: {broken}"


# A command line: `smallvision ARGS`, `bin/smallvision ARGS` (an optional `$ ` prompt before it), or a
# line that runs the package as a module (`python -m smallvision ARGS`, `torchrun ... -m smallvision ARGS`).
COMMAND = re.compile(r"^(?:\$\s+)?(?:bin/)?smallvision\s+(?P<args>.*)$")
MODULE = re.compile(r"(?:^|\s)-m\s+smallvision(?:\.cli)?\s+(?P<args>.*)$")
FENCE = re.compile(r"^\s*(```+|~~~+)")


def code_lines(path: Path):
    """(line number, text) of each line of code: inside a fenced block, or indented by four spaces or a tab
    outside one (Markdown's indented block). A line ending in a backslash is joined with the next, under
    the first line's number."""
    lines = path.read_text(encoding="utf-8").splitlines()
    fence = None
    pending, pending_number = "", 0
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if match and (fence is None or match.group(1).startswith(fence)):
            fence = match.group(1)[:3] if fence is None else None
            pending = ""
            continue
        if fence is None and not line.startswith(("    ", "\t")):
            pending = ""
            continue
        if not pending:
            pending_number = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield pending_number, (pending + line).strip()
        pending = ""


def command_lines():
    found = []
    for path in PAGES:
        for number, text in code_lines(path):
            match = COMMAND.match(text) or MODULE.search(text)
            if match:
                found.append(pytest.param(match.group("args"), id=f"{path.relative_to(REPO)}:{number}"))
    return found


COMMANDS = command_lines()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 60, f"only {len(COMMANDS)} command lines found in {[p.name for p in PAGES]}"


@pytest.mark.parametrize("args", COMMANDS)
def test_command_line_parses(args, request, tmp_path, monkeypatch):
    where = request.node.callspec.id
    words = shlex.split(args, comments=True)  # a trailing `# comment` is not part of the command
    # The files a line reads while parsing (`--layers my_net.txt`, which the pages show being written)
    # are there: a temporary directory holds them.
    monkeypatch.chdir(tmp_path)
    for flag, value in zip(words, words[1:]):
        if flag == "--layers" and "(" not in value and not Path(value).is_absolute():
            (tmp_path / value).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / value).write_text("Dense(10, activation='softmax')\n", encoding="utf-8")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parsed = build_parser().parse_args(words)
    except SystemExit as exit:  # argparse's answer to a bad line (status 2), or to --help (status 0)
        status = exit.code
    else:
        status = None
    line = " ".join(args.split())
    if status not in (None, 0):
        error = stderr.getvalue().strip().splitlines()[-1]  # argparse's usage, then its one-line error
        pytest.fail(f"{where}: `smallvision {line}` does not parse: {error}", pytrace=False)
    if status is None and not getattr(parsed, "handler", None):
        pytest.fail(f"{where}: `smallvision {line}` names no command", pytrace=False)
