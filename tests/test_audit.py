"""`data audit` on real photos with planted faults (every planted label error, leak and duplicate found, and
nothing else), on easy synthetic digits (the k-fold network path), its bad input, and a fix applied through the
journal that training then sees, and undoes byte for byte."""

import hashlib
import io
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_idx_source

from smallvision.errors import SmallvisionError

# 40 cats and 40 dogs of the shared train split, 8 and 8 of its test split, that the audit of the whole set
# scores at 0.995 or more for their own class (how the list was made: its header): the faults the tests plant
# are then the only ones, and a head trained on 60 photos still sees them plainly
EASY = [line for line in (Path(__file__).parent / "data" / "easy_catsdogs.txt").read_text().splitlines()
        if line and not line.startswith("#")]


def altered_copy(original: Path, target: Path) -> Path:
    """The picture resized to 90%, cropped 2 pixels a side, brightened 10%, re-encoded at JPEG quality 85 (the
    benchmark's copies are altered harder: benchmarks/audit_figures.py finds 24 of 25)."""
    from PIL import Image, ImageEnhance

    with Image.open(original) as image:
        image = image.convert("RGB")
        image = image.resize((round(image.width * 0.9), round(image.height * 0.9)))
        image = image.crop((2, 2, image.width - 2, image.height - 2))
        image = ImageEnhance.Brightness(image).enhance(1.1)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    target.write_bytes(buffer.getvalue())
    return target


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def planted(shared_catsdogs, tmp_path_factory):
    """40 cats and 40 dogs in train and 8 of each in test, from the shared set; then 2 cats moved into dogs/ and
    2 dogs into cats/, an altered copy of a test photo in train (a leak), an altered copy of a train photo beside
    it (a duplicate), and a damaged file. The audit, once, with 4 folds."""
    from smallvision.audit import audit

    root = tmp_path_factory.mktemp("planted") / "pets"
    for relative in EASY:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shared_catsdogs / relative, root / relative)
    original = root.parent / "original"
    shutil.copytree(root, original)
    rng = random.Random(1)
    moved = set()
    for name, other in (("cats", "dogs"), ("dogs", "cats")):
        for path in rng.sample(sorted((root / "train" / name).iterdir()), 2):
            os.rename(path, root / "train" / other / path.name)
            moved.add(f"train/{other}/{path.name}")
    test_photo = min((root / "test" / "dogs").iterdir())
    altered_copy(test_photo, root / "train" / "dogs" / "leak.jpg")
    train_photo = max(p for p in (root / "train" / "cats").iterdir() if p.name.startswith("cat."))
    altered_copy(train_photo, root / "train" / "cats" / "copy.jpg")
    (root / "train" / "cats" / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    before = tree_digest(root)
    result = audit(root, root.parent / "audit", folds=4, cache_dir=root.parent / "cache", progress=False)
    return {"root": root, "result": result, "moved": moved, "before": before, "cache": root.parent / "cache",
            "leak": ("train/dogs/leak.jpg", test_photo.relative_to(root).as_posix()),
            "copy": ("train/cats/copy.jpg", train_photo.relative_to(root).as_posix()), "original": original}


def test_every_planted_label_error_is_found_and_nothing_else(planted):
    result = planted["result"]
    names = result.catalogue.names
    flagged = {names[i]: (result.source.class_names[s], score) for i, s, score in result.finding.label_issues}
    assert set(flagged) == planted["moved"]
    for path, (suggested, score) in flagged.items():
        assert suggested != path.split("/")[1] and 0.5 < score <= 1.0  # the other class, and doubted strongly
    rows = (result.directory / "label_issues.csv").read_text().splitlines()
    assert rows[0] == "path,split,label,suggested,score,action" and len(rows) == 5
    scores = [float(row.split(",")[4]) for row in rows[1:]]
    assert scores == sorted(scores, reverse=True)  # the most doubtful first


def test_the_leak_and_the_duplicate_are_found_leaks_first(planted):
    result = planted["result"]
    names = result.catalogue.names
    groups = [{names[i] for i, _ in group} for group in result.finding.duplicate_groups]
    assert groups == [set(planted["leak"]), set(planted["copy"])]  # the group across splits first, nothing else
    assert len(result.leaks) == 1
    rows = (result.directory / "near_duplicates.csv").read_text().splitlines()
    assert rows[0] == "group,path,split,similarity,action"
    assert {row.split(",")[2] for row in rows[1:3]} == {"train", "test"}  # group 1 crosses splits


def test_the_damaged_file_is_named_and_skipped(planted):
    assert [path for path, _ in planted["result"].source.skipped] == ["train/cats/damaged.jpg"]


def test_the_pictures_the_page_and_the_record(planted):
    result = planted["result"]
    directory = result.directory
    for sheet in ("label_issues.png", "near_duplicates.png"):
        assert (directory / sheet).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (directory / "audit.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 4 + 2 + 2 + len(result.finding.outliers)
    assert "Labels that look wrong: 4" in page and "Near-duplicates: 2" in page and "across splits" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched
    record = json.loads((directory / "audit.json").read_text())
    listed = planted["moved"] | set(planted["leak"]) | set(planted["copy"])
    assert listed <= set(record["files"]) and record["kind"] == "folder"
    assert record["files"]["train/dogs/leak.jpg"]["sha1"] == hashlib.sha1(
        (planted["root"] / "train/dogs/leak.jpg").read_bytes()).hexdigest()
    assert tree_digest(planted["root"]) == planted["before"]  # the audit changes nothing in the folder


def test_applying_the_fixes_is_seen_by_training_and_undone_byte_for_byte(planted):
    """Relabel every label issue and remove the leak: the folder then reads as it was before the faults were
    planted (through the same decode cache: no stale label), and undo restores the planted tree exactly."""
    from smallvision.data.sources import open_source
    from smallvision.journal import apply_actions, undo

    root, directory = planted["root"], planted["result"].directory
    table = directory / "label_issues.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0]] + [line + "relabel" for line in lines[1:]]) + "\n")
    duplicates = directory / "near_duplicates.csv"
    rows = duplicates.read_text().splitlines()
    duplicates.write_text("\n".join([rows[0]] + [row + ("remove" if "leak.jpg" in row else "") for row in rows[1:]]) + "\n")
    try:
        assert apply_actions(table).relabelled == 4
        assert apply_actions(duplicates).removed == 1
        assert apply_actions(table).relabelled == 0  # twice: nothing more
        source = open_source(root, image_shape=(3, 64, 64), cache_dir=planted["cache"], for_training=False)
        original = planted["original"]
        read = {path: source.class_names[label] for path, label in zip(source.train.paths, source.train.labels.tolist())}
        expected = {p.relative_to(original).as_posix(): p.parent.name for p in (original / "train").rglob("*.jpg")}
        expected["train/cats/copy.jpg"] = "cats"
        assert read == expected
        assert (root / ".smallvision-removed" / "train" / "dogs" / "leak.jpg").is_file()
    finally:
        undo(root)
    after = tree_digest(root)
    assert {k: v for k, v in after.items() if ".smallvision-journal-undone" not in k} == planted["before"]


def easy_digits(directory: Path, per_class: int = 60, seed: int = 0) -> tuple[Path, list[int]]:
    """Three kinds of 28x28 image a small network tells apart at once (a horizontal bar, a vertical bar, a
    blob), with noise; 3 train labels changed, and train image 1 brightened as test image 0. The changed indices."""
    rng = np.random.default_rng(seed)

    def images(count: int) -> tuple[np.ndarray, np.ndarray]:
        pixels = rng.integers(0, 40, (count * 3, 28, 28)).astype(np.uint8)
        labels = np.repeat(np.arange(3), count).astype(np.uint8)
        for i, label in enumerate(labels):
            at = rng.integers(6, 20)
            if label == 0:
                pixels[i, at:at + 3, 4:24] = 250
            elif label == 1:
                pixels[i, 4:24, at:at + 3] = 250
            else:
                pixels[i, at - 4:at + 4, at - 4:at + 4] = 250
        return pixels, labels

    train, train_labels = images(per_class)
    test, test_labels = images(10)
    test[0] = np.clip(train[1].astype(int) + 20, 0, 255)  # a leak: a training digit, brighter, in test
    test_labels[0] = train_labels[1]
    changed = [i for i in (5, 70, 150) if i < len(train_labels)]
    for i in changed:
        train_labels[i] = (train_labels[i] + 1) % 3
    return write_idx_source(directory, train, train_labels, test, test_labels), changed


def test_digits_are_audited_by_a_network_trained_once_per_fold(tmp_path):
    from smallvision.audit import audit
    from smallvision.journal import apply_actions
    from smallvision.recipe import load_recipe

    source, changed = easy_digits(tmp_path / "digits")
    recipe = load_recipe("fast-mnist").replace(epochs=10, batch_size=16)  # 120 images a fold: more, smaller steps
    result = audit(source, tmp_path / "audit", recipe=recipe, folds=3, cache_dir=tmp_path / "cache", progress=False)
    names, splits = result.catalogue.names, result.catalogue.splits
    assert {names[i] for i, _, _ in result.finding.label_issues if splits[i] == "train"} == {str(i) for i in changed}
    assert "fast-mnist trained 3 times" in result.how
    groups = [{(splits[i], names[i]) for i, _ in group} for group in result.finding.duplicate_groups]
    assert groups == [{("train", "1"), ("test", "0")}]  # the leak, and no two other bars
    rows = (result.directory / "label_issues.csv").read_text().splitlines()
    assert {row.split(",")[0] for row in rows[1:]} == {str(i) for i in changed}  # named by index, as evaluate does
    table = result.directory / "label_issues.csv"
    table.write_text("\n".join([rows[0]] + [row + "relabel" for row in rows[1:]]) + "\n")
    with pytest.raises(SmallvisionError, match="IDX .*nothing to move"):
        apply_actions(table)


def test_bad_input(tmp_path, image_folder):
    from smallvision.audit import audit
    from smallvision.crossval import fold_count

    with pytest.raises(SmallvisionError, match="only one class"):
        fold_count(torch.zeros(10, dtype=torch.long), ["cats", "dogs"], 5)
    with pytest.raises(SmallvisionError, match="class 'dogs' has 1 training image"):
        fold_count(torch.tensor([0, 0, 0, 1]), ["cats", "dogs"], 5)
    assert fold_count(torch.tensor([0, 0, 0, 1, 1, 1]), ["cats", "dogs"], 5) == 3  # fewer folds, said by the audit
    with pytest.raises(SmallvisionError, match="at least 2 folds"):
        audit(image_folder, tmp_path / "a", folds=1)
    source, _ = easy_digits(tmp_path / "digits", per_class=5)
    with pytest.raises(SmallvisionError, match="a pretrained network takes photos"):
        audit(source, tmp_path / "b", recipe="catsdogs-features")


def test_near_duplicates_need_close_features_and_pixels_that_look_alike():
    from smallvision.neighbours import (
        Looks,
        hash_distance,
        near_duplicate_groups,
        nearest,
        outliers,
        unit_vectors,
    )

    generator = torch.Generator().manual_seed(0)
    base = unit_vectors(torch.randn(6, 32, generator=generator))
    close = unit_vectors(base[:1] * 0.9 + 0.4 * unit_vectors(torch.randn(1, 32, generator=generator)))
    same = unit_vectors(base[1:2] + 0.01 * torch.randn(1, 32, generator=generator))
    vectors = torch.cat([base, close, same])
    assert 0.80 <= float(vectors[0] @ vectors[6]) < 0.97  # close, not identical: the pixels decide
    thumbnails = unit_vectors(torch.randn(8, 64, generator=generator))
    thumbnails[6] = unit_vectors(thumbnails[0:1] + 0.1 * unit_vectors(torch.randn(1, 64, generator=generator)))[0]
    hashes = torch.tensor([0, 1 << 40, 2, 3, 4, 5, 0b111, -1])  # image 6's hash 3 bits from image 0's
    found = nearest(vectors, k=3)
    groups = near_duplicate_groups(found, Looks(hashes, thumbnails))
    assert sorted(sorted(i for i, _ in group) for group in groups) == [[0, 6], [1, 7]]
    far = hashes.clone()
    far[6] = (1 << 63) - 1  # 63 bits away: not the same picture, however close the rest
    assert sorted(sorted(i for i, _ in group) for group in near_duplicate_groups(found, Looks(far, thumbnails))) == [[1, 7]]
    unlike = thumbnails.clone()
    unlike[6] = -thumbnails[0]  # the same hash, a thumbnail that does not correlate
    assert sorted(sorted(i for i, _ in group) for group in near_duplicate_groups(found, Looks(hashes, unlike))) == [[1, 7]]
    assert sorted(sorted(i for i, _ in group) for group in near_duplicate_groups(found, None)) == [[1, 7]]  # digits
    assert int(hash_distance(torch.tensor([0b1011]), torch.tensor([0b0001]))[0]) == 2
    scores = torch.cat([torch.full((50,), 0.3) + 0.01 * torch.randn(50, generator=generator), torch.tensor([0.9])])
    assert outliers(scores) == [50]


def test_what_pixels_look_like_survives_brightness_and_a_resize():
    from smallvision.data.imageset import ImageSet
    from smallvision.neighbours import Looks, hash_distance

    generator = torch.Generator().manual_seed(0)
    picture = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=generator) * 200, size=(64, 64),
                                              mode="bilinear")
    brighter = (picture * 1.2).clamp(0, 255)
    resized = torch.nn.functional.interpolate(torch.nn.functional.interpolate(picture, size=(48, 48), mode="area"),
                                              size=(64, 64), mode="bilinear")
    other = torch.rand(1, 3, 64, 64, generator=generator) * 255
    images = torch.cat([picture, brighter, resized, other]).round().byte()
    looks = Looks.of(ImageSet(images, torch.zeros(4, dtype=torch.long), ["a"]))
    distances = hash_distance(looks.hashes[:1].expand(4), looks.hashes).tolist()
    assert distances[1] <= 4 and distances[2] <= 8 and distances[3] >= 20
    correlation = (looks.thumbnails[:1] * looks.thumbnails).sum(1).tolist()
    assert correlation[1] > 0.99 and correlation[2] > 0.95 and correlation[3] < 0.5


def test_data_check_points_to_the_audit(image_folder, capsys):
    from smallvision.cli import main

    assert main(["data", "check", str(image_folder), "--recipe", "seed-mnist", "--image-size", "28"]) == 0
    assert f"near-duplicates and leaks, outliers: smallvision data audit {image_folder}" in capsys.readouterr().out
