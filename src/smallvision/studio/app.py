"""`create_studio`: the studio's FastAPI application: the page at `/` and its JSON API under `/api`.

Every path from the page names a root by number and a path inside it (roots.py); the runs are the runs
folder's (runs.py); trainings start as processes of their own (trainer.py). Every error is JSON
{"detail": ...}: 403 for a path out of the roots, 409 for a second training, 400 for a recipe's own refusal.
"""

import contextlib
import dataclasses
import hmac
import io
import re
import threading
import time
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from smallvision.data.folders import SPLIT_FOLDERS, FolderProblem, is_image_folder, scan_folder, subfolders
from smallvision.errors import SmallvisionError
from smallvision.files import write_atomically
from smallvision.images import IMAGE_SUFFIXES
from smallvision.serve.app import MAX_BODY
from smallvision.serve.limits import BodyLimit
from smallvision.studio.audits import Audits
from smallvision.studio.augmenting import with_augment
from smallvision.studio.idx import IdxSources, digit_name, parse_digit_name
from smallvision.studio.roots import OutsideRoots, Roots, inside, joined
from smallvision.studio.runs import list_runs, read_live, run_state
from smallvision.studio.products import Products, Tried
from smallvision.studio.trainer import LOGS, Busy, Trainer

PAGE = Path(__file__).parent / "page"
THUMB = 160  # pixels, the longer side
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
REPORT_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                 "base-uri 'none'; form-action 'none'")
SCAN_SECONDS = 5.0  # a folder's listing is reused this long (paging through a class of 10,000 reads it once)
# What each built-in recipe reached on the shared sets (docs/results.md, test splits), shown beside it
REACHED = {"seed-mnist": "MNIST test 0.992", "fast-mnist": "MNIST test 0.993 in 2 epochs",
           "catsdogs": "cats-vs-dogs test 0.92 (from scratch, 120 epochs)", "catsdogs-features": "cats-vs-dogs test 0.981",
           "catsdogs-features-augment": "cats-vs-dogs test 0.984", "catsdogs-finetune": "cats-vs-dogs test 0.980-0.983",
           "seed-catsdogs": "cats-vs-dogs test 0.72 (the seed's, from scratch)",
           "seed-catsdogs-augment": "cats-vs-dogs test 0.78 (the seed's, with augmentation)"}
CHECK_RECIPE = "seed-catsdogs"  # `data check`'s own default: the size it decodes photos to
OVERRIDES = {"epochs": "--epochs", "batch_size": "--batch-size", "learning_rate": "--lr", "image_size": "--image-size"}


class Fix(BaseModel):
    root: int
    path: str = ""  # the source folder, inside the root: where its journal is
    photo: str  # the photo, inside the root (as /api/images names it)
    action: str  # "relabel" or "remove"
    to: str | None = None  # relabel: the class it goes to


class Folder(BaseModel):
    root: int
    path: str = ""


class Keep(BaseModel):
    root: int
    path: str = ""  # the audited source folder
    photo: str  # inside the root
    table: str  # label_issues, near_duplicates or outliers


class Start(BaseModel):
    root: int
    path: str = ""  # the source folder, inside the root
    recipe: str
    name: str | None = None  # the run's folder name (default: recipe and time)
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    image_size: int | None = None
    augment: dict | None = None  # augment fields over the recipe's own (augmenting.with_augment)


class Preview(BaseModel):
    root: int
    path: str = ""  # the source folder, inside the root
    recipe: str
    augment: dict | None = None
    seed: int = 0


def create_studio(roots: list, runs: str | Path, token: str | None = None) -> FastAPI:
    """The studio over the folders `roots` (sources of photos, or folders holding them) and the runs folder
    `runs` (made if missing). With `token`, every /api route wants `Authorization: Bearer TOKEN`."""
    folders = Roots.of(roots)
    runs = Path(runs).expanduser()
    runs.mkdir(parents=True, exist_ok=True)
    runs = runs.resolve()
    trainer = Trainer(runs)
    audits = Audits(runs)
    products, tried = Products(runs), Tried()
    scans: dict[Path, tuple[float, object]] = {}
    checking = threading.Lock()
    digits = IdxSources()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        tried.stop()  # the page it served goes with the studio; a training goes on (trainer.py says why)

    app = FastAPI(title="smallvision studio", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.trainer, app.state.tried = trainer, tried
    app.add_middleware(BodyLimit, limit=MAX_BODY)  # a drop's request, as serve's
    bearer = HTTPBearer(auto_error=False)

    def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token and (credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode())):
            raise HTTPException(401, "this studio wants `Authorization: Bearer TOKEN`, the token it was started with "
                                     "(--token)", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(OutsideRoots)
    async def outside(request, error: OutsideRoots):
        return JSONResponse({"detail": str(error)}, status_code=403)

    @app.exception_handler(Busy)
    async def busy(request, error: Busy):
        return JSONResponse({"detail": str(error)}, status_code=409)

    @app.exception_handler(SmallvisionError)
    async def refused(request, error: SmallvisionError):
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(PAGE / "index.html", headers={"Content-Security-Policy": PAGE_POLICY,
                                                          "Cache-Control": "no-cache"})

    app.mount("/page", StaticFiles(directory=PAGE), name="page")

    def scanned(root: int, folder: Path):
        """The folder's listing (data.folders.scan_folder) without the files that are symlinks out of the root,
        reused for SCAN_SECONDS."""
        import os

        now = time.monotonic()
        if folder not in scans or now - scans[folder][0] > SCAN_SECONDS:
            scan = scan_folder(folder)
            base = str(folders.folders[root]) + os.sep
            for split, files in scan.files.items():
                scan.files[split] = [(relative, label) for relative, label in files
                                     if os.path.realpath(os.path.join(folder, relative)).startswith(base)]
            scans[folder] = (now, scan)
        return scans[folder][1]

    def describe(root: int, folder: Path) -> dict:
        from smallvision.datacheck import imbalance_warning

        answer = {"root": root, "path": folders.relative(root, folder), "name": folder.name}
        if digits.holds(folder):
            try:
                described = digits.describe(folder)
            except (SmallvisionError, OSError, ValueError) as err:
                return {**answer, "problem": str(err)}
            imbalance = imbalance_warning(described["counts"]["train"].values())
            return {**answer, **described, "warnings": [imbalance] if imbalance else []}
        try:
            scan = scanned(root, folder)
        except (FolderProblem, SmallvisionError, OSError) as err:
            return {**answer, "problem": str(err)}
        counts = {split: {name: 0 for name in scan.class_names} for split in scan.files}
        for split, files in scan.files.items():
            for _, label in files:
                counts[split][scan.class_names[label]] += 1
        imbalance = imbalance_warning(counts["train"].values()) if "train" in counts else None
        return {**answer, "layout": scan.layout, "classes": scan.class_names, "counts": counts,
                "warnings": [*scan.warnings, *([imbalance] if imbalance else [])]}

    def trainable(folder: Path) -> bool:
        """A source the CLI takes as it is: a folder of photos, or of IDX files."""
        return is_image_folder(folder) or digits.holds(folder)

    api = [Depends(authorized)]

    @app.get("/api/state", dependencies=api)
    def state():
        return {"roots": [folder.name for folder in folders.folders], "runs": str(runs),
                "training": trainer.status(), "busy": trainer.busy_with()}

    @app.get("/api/sources", dependencies=api)
    def sources():
        """Each root that is a folder of photos, and each folder of photos one level inside a root."""
        found = []
        for root, folder in enumerate(folders.folders):
            if looks_like_source(folder) or digits.holds(folder):
                found.append(describe(root, folder))
                continue
            for child in subfolders(folder):
                try:
                    child = inside(folder, child.name)
                except OutsideRoots:
                    continue  # a symlink out of the root
                if looks_like_source(child) or digits.holds(child):
                    found.append(describe(root, child))
        return found

    @app.get("/api/images", dependencies=api)
    def images(root: int, path: str = "", split: str = "train", label: str = Query(..., alias="class"),
               offset: int = Query(0, ge=0), limit: int = Query(60, ge=1, le=500)):
        """A page of one class's files in one split (paths inside the root), and how many there are."""
        folder = folders.resolve(root, path)
        base = folders.relative(root, folder)
        if digits.holds(folder):  # each digit by its split and index (digit_name)
            classes = digits.describe(folder)["classes"]
            if label not in classes:
                raise SmallvisionError(f"{folder.name} has no class {label!r}; it has {', '.join(classes)}")
            files = digits.names(folder, base, split, label)
            return {"root": root, "path": base, "split": split, "class": label, "total": len(files),
                    "offset": offset, "files": files[offset:offset + limit]}
        scan = scanned(root, folder)
        if label not in scan.class_names:
            raise SmallvisionError(f"{folder.name} has no class {label!r}; it has {', '.join(scan.class_names)}")
        index = scan.class_names.index(label)
        files = [relative for relative, found in scan.files.get(split, []) if found == index]
        chosen = [joined(base, relative) for relative in files[offset:offset + limit]]
        return {"root": root, "path": base, "split": split, "class": label, "total": len(files), "offset": offset,
                "files": chosen}

    @app.get("/api/thumb", dependencies=api)
    def thumb(root: int, path: str):
        """A JPEG of the photo at most THUMB pixels on its longer side."""
        from PIL import Image, UnidentifiedImageError

        digit = parse_digit_name(path)
        folder = folders.resolve(root, digit[0]) if digit is not None else None
        if folder is not None and digits.holds(folder):
            drawn = digits.png(folder, digit[1], digit[2])
            if drawn is None:
                raise HTTPException(404, f"{path}: no such digit here")
            return Response(drawn, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})
        file = folders.resolve(root, path)
        if file.suffix.lower() not in IMAGE_SUFFIXES or not file.is_file():
            raise HTTPException(404, f"{path}: not an image file here")
        try:
            with Image.open(file) as image:
                image.draft("RGB", (THUMB, THUMB))  # a JPEG decodes at a fraction of its size
                image = image.convert("RGB")
                image.thumbnail((THUMB, THUMB))
                out = io.BytesIO()
                image.save(out, "JPEG", quality=80)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise HTTPException(422, f"{path}: not a readable image ({err})") from None
        return Response(out.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    def in_source(root: int, path: str, photo: str) -> tuple[Path, str]:
        """The source folder and the photo's path inside it; both inside the root (403 otherwise)."""
        source = folders.resolve(root, path)
        if digits.holds(source):
            raise SmallvisionError(f"{source.name}: digits in IDX files are not moved one at a time (the four files "
                                   f"hold them all); make a folder of them to fix them here")
        folders.resolve(root, photo)
        base = folders.relative(root, source)
        if base and not photo.startswith(base + "/"):
            raise OutsideRoots(f"{photo!r} is not in the source {base!r}")
        return source, photo[len(base) + 1:] if base else photo

    def moved(move) -> dict:
        from smallvision.journal import REMOVED

        removed = move.target.startswith(REMOVED + "/")
        return {"from": move.source, "to": move.target, "action": "remove" if removed else "relabel"}

    def journal_state(root: int, source: Path) -> dict:
        from smallvision.journal import journal_moves

        moves = journal_moves(source)
        return {"root": root, "path": folders.relative(root, source), "moves": len(moves),
                "last": moved(moves[0]) if moves else None}

    @app.post("/api/fix", dependencies=api)
    def fix(request: Fix):
        """Relabel a photo into another class's folder, or remove it (into the source's .smallvision-removed/),
        through the source's journal, as `data apply` moves (journal.fix_photo); undone by /api/undo."""
        from smallvision.journal import fix_photo

        source, photo = in_source(request.root, request.path, request.photo)
        move = fix_photo(source, photo, request.action, request.to)
        scans.pop(source, None)
        return {"moved": moved(move), "journal": journal_state(request.root, source)}

    @app.post("/api/undo", dependencies=api)
    def undo(request: Folder):
        """Put back the newest move in the source's journal, byte for byte (journal.undo_last)."""
        from smallvision.journal import undo_last

        source = folders.resolve(request.root, request.path)
        put_back = undo_last(source)
        scans.pop(source, None)
        return {"put_back": [moved(move) for move in put_back], "journal": journal_state(request.root, source)}

    @app.get("/api/journal", dependencies=api)
    def journal(root: int, path: str = ""):
        """How many moves of the source Undo can still put back, and the newest."""
        return journal_state(root, folders.resolve(root, path))

    @app.post("/api/drop", dependencies=api)
    async def drop(request: Request, root: int, folder: str = Query(..., description="the dataset folder, in the root"),
                   label: str | None = Query(None, alias="class")):
        """Photos dropped on the page into ROOT/FOLDER/CLASS/ (drops.py): each one saved, or refused with its
        reason; the folder is made on the first drop. Serve's limits: 10 MB a request, 64 files."""
        from smallvision.serve.app import uploads
        from smallvision.studio.drops import checked_name, save_photos

        name, class_name = checked_name(folder, "folder name"), checked_name(label, "class name")
        target = folders.resolve(root, name)
        files = await uploads(request)
        dropped = save_photos(target, class_name, files)
        scans.pop(target, None)
        return {"folder": {"root": root, "path": folders.relative(root, target)}, "class": class_name,
                "saved": dropped.saved, "refused": dropped.refused}

    @app.post("/api/check", dependencies=api)
    def check(request: Folder):
        """`data check` of the source, here and now (every photo decoded at the seed-catsdogs recipe's size
        through the decode cache training shares; seconds for a few thousand photos, then cached): whether it
        can be trained on, the files that cannot be read and why, groups of files with the same bytes (within
        and across splits), the warnings and the image sizes. 409 while a training or an audit runs."""
        from smallvision.datacheck import check_source, image_statistics
        from smallvision.models import recipe_image_shape

        source = folders.resolve(request.root, request.path)
        idx = digits.holds(source)
        if not trainable(source):
            raise SmallvisionError(f"{request.path or source.name}: not a folder of photos to check")
        training, auditing = trainer.busy_with(), audits.running()  # each looks once (the lock files, a process)
        if training:
            raise Busy(f"{training} is training now; check once it has ended")
        if auditing is not None:
            raise Busy(f"{auditing.name} is being audited now; check once the audit has ended")
        with checking:  # one at a time: each decodes every photo with every core
            # the page's own listing: a photo that is a symlink out of the root is neither read nor named
            report = check_source(str(source), recipe_image_shape(builtin_recipe(CHECK_RECIPE)), progress=False,
                                  scan=None if idx else scanned(request.root, source))
        base = folders.relative(request.root, source)
        return {"root": request.root, "path": base, "problem": report.problem,
                "skipped": [{"photo": joined(base, path), "reason": reason} for path, reason in report.source.skipped],
                "duplicates": [[{"split": split, "photo": joined(base, path)} for split, path in group]
                               for group in report.duplicates],
                "warnings": report.warnings, "statistics": [line for line in image_statistics(report.source) if line],
                "data_path": report.data_path}

    @app.post("/api/audit", status_code=202, dependencies=api)
    def audit(request: Folder):
        """`smallvision data audit` of the source in a process of its own (409 while a training or another
        audit runs); GET /api/audit says how it goes and, once done, its findings."""
        source = folders.resolve(request.root, request.path)
        if not trainable(source):
            raise SmallvisionError(f"{request.path or source.name}: not a folder of photos to audit")
        audits.start(source, trainer.busy_with())
        return {"state": "auditing"}

    @app.get("/api/audit", dependencies=api)
    def audited(root: int, path: str = ""):
        source = folders.resolve(root, path)
        answer = audits.state(source)
        base = folders.relative(root, source)
        idx = digits.holds(source)
        for rows in answer.get("findings", {}).values():
            for row in rows:  # a digit of IDX files is named by its index in its split (audit.py)
                row["photo"] = digit_name(base, row["split"], row["path"]) if idx else joined(base, row["path"])
                row["here"] = row["here"] or idx
        return answer

    @app.post("/api/audit/keep", dependencies=api)
    def keep(request: Keep):
        """Keep a photo the audit doubted: "keep" in its row of the table (nothing moves)."""
        source = folders.resolve(request.root, request.path)
        digit = parse_digit_name(request.photo)
        if digits.holds(source) and digit is not None and digit[0] == folders.relative(request.root, source):
            audits.keep(source, request.table, str(digit[2]), split=digit[1])
            return {"kept": request.photo}
        source, photo = in_source(request.root, request.path, request.photo)
        audits.keep(source, request.table, photo)
        return {"kept": photo}

    @app.get("/api/recipes", dependencies=api)
    def recipes():
        from smallvision.recipe import builtin_recipes, load_recipe

        listed = []
        for name in builtin_recipes():
            recipe = load_recipe(name)
            listed.append({"name": name, "description": recipe.description, "reached": REACHED.get(name),
                           "epochs": recipe.schedule.epochs,
                           "batch_size": recipe.optimizer.batch_size, "learning_rate": recipe.optimizer.learning_rate,
                           "image_size": recipe.data.image_size, "augment": dataclasses.asdict(recipe.augment)})
        return listed

    @app.post("/api/augment/preview", dependencies=api)
    def augment_preview(request: Preview):
        """PNG: the source's first training photo of each of its first classes, beside augmented copies
        made as training makes them, with the recipe's augmentation and the page's changes to it."""
        from smallvision.images import load_image
        from smallvision.models import recipe_image_shape, with_backbone_preprocessing
        from smallvision.studio.augmenting import PREVIEW_PHOTOS, PREVIEW_SIZE, preview_png

        source = folders.resolve(request.root, request.path)
        recipe = with_augment(with_backbone_preprocessing(builtin_recipe(request.recipe)), request.augment)
        if digits.holds(source):  # digits at their own size, as training takes them
            originals = digits.first_of_classes(source, PREVIEW_PHOTOS)
        else:
            scan = scanned(request.root, source)
            files = scan.files.get("train") or next(iter(scan.files.values()), [])
            photos, seen = [], set()
            for relative, label in files:
                if label not in seen and len(seen) < PREVIEW_PHOTOS:
                    seen.add(label)
                    photos.append(source / relative)
            shape = recipe_image_shape(recipe)
            size = shape[1] if shape else PREVIEW_SIZE
            originals = [load_image(photo, 3, size, size) for photo in photos]
        return Response(preview_png(originals, recipe.augment, request.seed), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    @app.get("/api/estimates", dependencies=api)
    def estimates(root: int, path: str = "", recipe: str | None = Query(None, description="default: every recipe")):
        """How long recipes would take on this folder here, in seconds (budget.py: this machine's rates for
        the recipe's network at the size it decodes photos to, measured once in a second or two and then
        cached, times the images the recipe sends through it): the one asked for (the three pretrained ones
        together: one backbone, one measurement) or all; a recipe of layers without an image size has none.
        Not measured while a training runs: the two would slow each other."""
        from smallvision.budget import CANDIDATES
        from smallvision.inference import resolve_device
        from smallvision.models import recipe_image_shape
        from smallvision.recipe import builtin_recipes, load_recipe
        from smallvision.workflow import choose_default, estimate_here

        source = folders.resolve(root, path)
        known = builtin_recipes()
        if recipe is not None:
            builtin_recipe(recipe)
        busy = trainer.busy_with()
        if busy:
            return {"estimates": {}, "why": f"{busy} is training: estimates are measured when none is"}
        device = resolve_device("auto")
        estimated = {}
        photos = not digits.holds(source)  # digits: the networks trained from scratch at the digits' own size
        if photos and (recipe is None or recipe in CANDIDATES):
            estimated.update(choose_default(source, load_recipe(CANDIDATES[0]), {}, device, None).estimates)
        for name in [recipe] if recipe is not None else known:
            usable = recipe_image_shape(known[name]) is not None if photos else not known[name].network.backbone
            if name not in estimated and usable:
                estimated[name] = estimate_here(source, known[name], device)
        return {"estimates": {name: round(seconds, 1) for name, seconds in estimated.items()}}

    @app.post("/api/train", status_code=202, dependencies=api)
    def train(start: Start):
        """Start a training (409 while another runs); the recipe with the overrides is checked first (400)."""
        source = folders.resolve(start.root, start.path)
        if not trainable(source):
            raise SmallvisionError(f"{start.path or source.name}: not a folder of photos (ROOT/CLASS/*.jpg or "
                                   f"ROOT/train/CLASS/*.jpg)")
        auditing = audits.running()
        if auditing is not None:
            raise Busy(f"{auditing.name} is being audited now; train once the audit has ended")
        changes = {field: getattr(start, field) for field in OVERRIDES if getattr(start, field) is not None}
        # the recipe's own message for a value out of range, before anything starts
        augmented = with_augment(builtin_recipe(start.recipe), start.augment)
        augmented.replace(**changes)
        name = start.name or f"{start.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
            raise SmallvisionError(f"{name!r}: a run's name is letters, digits, '.', '_' and '-'")
        run = inside(runs, name)
        if run.exists():
            raise Busy(f"{name}: a run of that name exists already; choose another name")
        recipe = start.recipe
        if start.augment:  # the recipe with the page's augmentation, as a file beside the studio's logs
            recipe = runs / LOGS / f"{name}.recipe.toml"
            recipe.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(recipe, augmented.save)
        arguments = [str(source), "--recipe", str(recipe)]
        for field, flag in OVERRIDES.items():
            if field in changes:
                arguments += [flag, str(changes[field])]
        trainer.start(arguments, run)
        return {"run": name}

    def state_of(run: Path) -> str:
        """runs.run_state, except that the studio's own training is "training" until its process has ended (it
        writes its stop and its checkpoint before it lets go)."""
        current = trainer.current
        if current is not None and current.run == run and current.process.poll() is None:
            return "training"
        return run_state(run)

    def run_folder(name: str) -> Path:
        run = inside(runs, name)
        if not run.is_dir() or run == runs:
            raise HTTPException(404, f"{name}: no such run in {runs}")
        return run

    @app.post("/api/runs/{name}/stop", status_code=202, dependencies=api)
    def stop(name: str):
        trainer.stop(run_folder(name))
        return {"run": name}

    @app.post("/api/runs/{name}/resume", status_code=202, dependencies=api)
    def resume(name: str):
        from smallvision.workflow import started_source

        run = run_folder(name)
        if state_of(run) not in ("stopped", "ended"):
            raise Busy(f"{name}: {state_of(run)}, nothing to resume")
        started_source(run)  # a source moved away: said here (400), not by a process that ends at once
        trainer.resume(run)
        return {"run": name}

    @app.post("/api/runs/{name}/make/{what}", dependencies=api)
    def make(name: str, what: str):
        """Ship: the run's ONNX or Keras file, or its HTML report (Review), made by the CLI in a process of its
        own (`smallvision export`, `smallvision report`); then GET .../files/WHAT. 400 with the CLI's own line
        when it refuses (an unfinished run, a source that moved)."""
        run = run_folder(name)
        if state_of(run) != "finished":
            raise SmallvisionError(f"{name}: {state_of(run)}; only a finished run can be exported or reported")
        made = products.make(run, what)
        return {"file": f"/api/runs/{name}/files/{what}", "name": made.name}

    def authorized_by_link(token_: str | None = Query(None, alias="token"),
                           credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        """A file opened in a new tab or downloaded by a link carries no header: it may carry ?token= instead."""
        if token and token_ is not None and hmac.compare_digest(token_.encode(), token.encode()):
            return
        authorized(credentials)

    @app.get("/api/runs/{name}/files/{what}", dependencies=[Depends(authorized_by_link)])
    def made_file(name: str, what: str):
        file = products.path(run_folder(name), what)
        if not file.is_file():
            raise HTTPException(404, f"{name}: no {what} made yet")
        if what == "report":  # our own self-contained page: its inline styles and scripts, nothing from elsewhere
            return FileResponse(file, media_type="text/html", headers={"Content-Security-Policy": REPORT_POLICY})
        return FileResponse(file, filename=file.name, media_type="application/octet-stream")

    @app.post("/api/runs/{name}/review", dependencies=api)
    def review(name: str):
        """Review: `smallvision evaluate RUN` (its test split) in a process of its own, then what GET answers."""
        run = run_folder(name)
        if state_of(run) != "finished":
            raise SmallvisionError(f"{name}: {state_of(run)}; only a finished run can be reviewed")
        return reviewed(run, products.evaluate(run))

    @app.get("/api/runs/{name}/review", dependencies=api)
    def last_review(name: str):
        run = run_folder(name)
        done = sorted((folder for folder in run.glob("eval-*") if (folder / "predictions.csv").is_file()),
                      key=lambda folder: (folder / "predictions.csv").stat().st_mtime)
        if not done:  # asked of every finished run the page opens: an answer, not an error
            return {"run": name, "reviewed": False}
        return reviewed(run, done[-1])

    def reviewed(run: Path, folder: Path) -> dict:
        """The evaluation's figures and confusion matrix, and every photo scored: its place under the roots
        (None outside them: shown without a picture or a fix), true and predicted class, probability and loss
        (-log of the true class's probability), highest loss first."""
        import csv
        import json
        import math

        metrics = json.loads((folder / "metrics.json").read_text())
        data = json.loads((run / "data.json").read_text()) if (run / "data.json").is_file() else {}
        base = Path(data["root"]) if data.get("root") else None
        photos = []
        with open(folder / "predictions.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                image = Path(row["image"])
                if not image.is_absolute() and base is not None:
                    image = base / image
                true_probability = float(row.get(f"p_{row['true']}") or 0.0)
                photos.append({"image": row["image"], "at": folders.place(image) if image.is_absolute() else None,
                               "true": row["true"], "predicted": row["predicted"],
                               "probability": float(row["probability"]),
                               "loss": round(-math.log(max(true_probability, 1e-12)), 4)})
        photos.sort(key=lambda photo: -photo["loss"])
        figures = {key: metrics.get(key) for key in ("source", "split", "images", "accuracy", "balanced_accuracy",
                                                     "loss", "ece")}
        return {"run": run.name, "reviewed": True, **figures, "class_names": metrics["class_names"], "confusion": metrics["confusion"],
                "source_at": folders.place(base) if base is not None else None, "photos": photos}

    @app.post("/api/runs/{name}/gradcam", dependencies=api)
    def gradcam(name: str, photos: list[Folder]):
        """Grad-CAM pictures for photos under the roots (`smallvision explain`, one process for all of them)."""
        run = run_folder(name)
        if len(photos) > 64:
            raise SmallvisionError(f"{len(photos)} photos: Grad-CAM for at most 64 at a time")
        files = [folders.resolve(photo.root, photo.path) for photo in photos]
        answers = products.explain(run, files) if files else []
        pictures = []
        for photo, answer in zip(photos, answers):
            picture = answer.get("picture")
            pictures.append({"root": photo.root, "path": photo.path, "error": answer.get("error"),
                             "picture": f"/api/runs/{name}/gradcam/{Path(picture).name}" if picture else None})
        return pictures

    @app.get("/api/runs/{name}/gradcam/{picture}", dependencies=api)
    def gradcam_picture(name: str, picture: str):
        file = inside(products.gradcam_folder(run_folder(name)), picture)
        if file.suffix != ".png" or not file.is_file():
            raise HTTPException(404, f"{picture}: no such Grad-CAM picture")
        return FileResponse(file, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.post("/api/runs/{name}/try", dependencies=api)
    def try_run(name: str):
        """Try: `smallvision serve RUN` on a free loopback port (the one before it stopped): its page classifies
        dropped, pasted or chosen photos, says "None of these" and shows the Grad-CAM."""
        run = run_folder(name)
        if state_of(run) != "finished":
            raise SmallvisionError(f"{name}: {state_of(run)}; only a finished run can be tried")
        return {"url": tried.start(run, token), "serve": f"smallvision serve {run}"}

    @app.get("/api/compare.png", dependencies=api)
    def compare(names: str = Query(..., description="run names, comma-separated")):
        """The runs' validation accuracy in one picture (compare.plot_runs, as `compare --plot` draws it)."""
        from smallvision.compare import plot_runs

        chosen = [run_folder(name) for name in dict.fromkeys(names.split(",")) if name]
        finished = [run for run in chosen if (run / "history.csv").is_file()]
        if not finished:
            raise SmallvisionError("choose finished runs to compare (a run writes its history when it ends)")
        picture = runs / LOGS / "compare.png"
        picture.parent.mkdir(parents=True, exist_ok=True)
        plot_runs(finished, picture)
        return Response(picture.read_bytes(), media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/api/runs", dependencies=api)
    def runs_list():
        return list_runs(runs)

    @app.get("/api/runs/{name}/live", dependencies=api)
    def live(name: str, offset: int = Query(0, ge=0)):
        """The rows of the run's live.jsonl from byte `offset`, the offset to ask from next, and the run's state."""
        status = trainer.status()
        run = inside(runs, name)
        if not run.is_dir() and status.get("run") == name:  # started, its process not yet as far as its folder
            return {"rows": [], "offset": 0, "state": "starting" if status["running"] else "ended",
                    **({"why": status["why"]} if status.get("why") else {})}
        run = run_folder(name)
        rows, offset = read_live(run, offset)
        answer = {"rows": rows, "offset": offset, "state": state_of(run), "run_path": str(run)}
        if status.get("run") == name and status.get("why"):
            answer["why"] = status["why"]
        return answer

    return app


def builtin_recipe(name: str):
    """A built-in recipe by its name: the page names no file (a name with a '/' would have load_recipe read
    a file anywhere on the disk); an unknown name is the nearest ones, as a 400."""
    from smallvision.errors import unknown_name
    from smallvision.recipe import builtin_recipes

    known = builtin_recipes()
    if name not in known:
        raise unknown_name("recipe", name, list(known))
    return known[name]


def looks_like_source(folder: Path) -> bool:
    """A folder of class folders holding photos, or of split folders (train/, ...) holding class folders that
    do; a subfolder that is a symlink out of `folder` does not count."""
    def photos_in(directory: Path) -> bool:
        return any(entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES
                   for entry, _ in zip(directory.iterdir(), range(200)))

    def within(child: Path) -> Path | None:
        try:
            return inside(folder.resolve(), child.name)
        except OutsideRoots:
            return None

    children = [child for child in map(within, subfolders(folder)) if child is not None]
    splits = [child for child in children if child.name.lower() in SPLIT_FOLDERS]
    if splits:
        return any(photos_in(inside(split, kind.name)) for split in splits for kind in subfolders(split)[:50]
                   if not kind.is_symlink())
    return any(photos_in(child) for child in children[:50])


def studio(roots: list, runs: str | Path = "runs", host: str = "127.0.0.1", port: int = 8800,
           token: str | None = None, open_page: bool = False) -> None:
    """Serve the studio until Ctrl-C. Any address but loopback needs a token: the studio moves files and
    starts trainings, so it is refused without one."""
    import uvicorn

    from smallvision.serve.server import Server, bind, is_loopback, url

    if not is_loopback(host) and not token:
        raise SmallvisionError(f"--host {host} lets other machines reach the studio, which starts trainings: give "
                               f"--token (or SMALLVISION_TOKEN) as well, or leave --host at 127.0.0.1")
    app = create_studio(roots, runs, token)
    listener = bind(host, port)
    address = url(host, listener.getsockname()[1])
    print(f"studio at {address} (runs in {Path(runs).resolve()}); Ctrl-C stops", flush=True)
    if open_page:
        import webbrowser

        webbrowser.open(address)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5, lifespan="on")
    try:
        Server(config).run(sockets=[listener])
    finally:
        listener.close()
