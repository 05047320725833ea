"""Image-folder sources: layouts, the split rule, formats and modes, damaged files, the decode cache."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import COLOURS, make_image_folder, write_image
from PIL import Image

import smallvision as sv
from smallvision.data.sources import open_source
from smallvision.errors import SmallvisionError

SHAPE = (3, 24, 24)


def load(path, tmp_path, **options):
    return open_source(path, image_shape=options.pop("image_shape", SHAPE), cache_dir=tmp_path / "cache", **options)


def test_split_folders_are_detected_with_their_aliases(tmp_path):
    root = make_image_folder(tmp_path / "pets", splits=("train", "val", "test"), per_class=3)
    source = load(root, tmp_path)
    assert source.layout == "splits"
    assert source.class_names == ["cats", "dogs"]
    assert {name: len(split) for name, split in source.splits().items()} == {"train": 6, "validation": 6, "test": 6}
    assert source.train.images.shape[1:] == SHAPE and source.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert source.train.paths[0] == os.path.join("train", "cats", "cats0.png")


def test_class_folders_are_split_stratified_seeded_and_disjoint(tmp_path):
    root = make_image_folder(tmp_path / "pets", splits=(), classes=("birds", "cats", "dogs"), per_class=10)
    first = load(root, tmp_path, val_split=0.2, test_split=0.3, seed=3)
    assert first.layout == "classes"
    assert first.test.class_counts() == [3, 3, 3]
    assert first.validation.class_counts() == [1, 1, 1]
    all_paths = first.train.paths + first.validation.paths + first.test.paths
    assert len(all_paths) == len(set(all_paths)) == 30
    again = load(root, tmp_path, val_split=0.2, test_split=0.3, seed=3)
    assert again.test.paths == first.test.paths and again.validation.paths == first.validation.paths
    other = load(root, tmp_path, val_split=0.2, test_split=0.3, seed=4)
    assert other.test.paths != first.test.paths


def test_classes_must_agree_across_splits(tmp_path):
    root = make_image_folder(tmp_path / "pets", per_class=2)
    write_image(root / "test" / "birds" / "b.png", COLOURS["birds"])
    with pytest.raises(SmallvisionError, match=r"test: its class folders differ from train/'s: has extra \['birds'\]"):
        load(root, tmp_path)


def test_every_format_and_mode_becomes_the_recipe_channels(tmp_path):
    root = tmp_path / "formats"
    cases = {"a.jpg": ("JPEG", "RGB"), "b.png": ("PNG", "RGBA"), "c.bmp": ("BMP", "L"), "d.gif": ("GIF", "P"),
             "e.webp": ("WEBP", "RGB"), "f.tif": ("TIFF", "CMYK"), "g.png": ("PNG", "P")}
    for name, (fmt, mode) in cases.items():
        write_image(root / "cats" / name, COLOURS["cats"], fmt=fmt, mode=mode)
        write_image(root / "dogs" / name, COLOURS["dogs"], fmt=fmt, mode=mode)
    grey16 = (np.full((20, 20), 40000, dtype=np.uint16))
    Image.fromarray(grey16).save(root / "cats" / "h16.png")
    Image.fromarray(grey16).save(root / "dogs" / "h16.png")
    source = load(root, tmp_path)
    assert source.skipped == [] and len(source.train) == 2 * (len(cases) + 1)
    by_path = dict(zip(source.train.paths, source.train.images))
    red = by_path[os.path.join("cats", "a.jpg")].float().mean(dim=(1, 2))
    assert red[0] > 150 and red[2] < 100  # RGB order kept
    sixteen_bit = by_path[os.path.join("cats", "h16.png")].float()
    assert abs(sixteen_bit.mean() - 40000 / 65535 * 255) < 2  # scaled to 8 bits, not clipped to white
    grey = open_source(root, image_shape=(1, 24, 24), cache_dir=tmp_path / "cache")
    assert grey.train.images.shape[1] == 1


def test_exif_orientation_is_applied(tmp_path):
    root = make_image_folder(tmp_path / "pets", splits=(), per_class=2)
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # white on the left, as stored
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(root / "cats" / "rotated.jpg", exif=exif)
    source = open_source(root, image_shape=(3, 40, 20), cache_dir=tmp_path / "cache")
    upright = dict(zip(source.train.paths, source.train.images))[os.path.join("cats", "rotated.jpg")].float()
    assert upright.shape == (3, 40, 20)
    assert upright[:, :15].mean() > 200 and upright[:, 25:].mean() < 50  # the white half is now on top


def test_a_large_jpeg_is_decoded_small_when_that_loses_nothing(tmp_path):
    import io

    from smallvision.images import decode_image, open_image, resized_pixels
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 1600)[None, :, None] * np.ones((1200, 1, 3))
    pixels = np.clip(gradient + rng.normal(0, 20, gradient.shape), 0, 255).astype(np.uint8)
    pixels[:, :400] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # stored on its side: displayed 1200 wide, 1600 high
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif)
    content = buffer.getvalue()
    full, _ = open_image(content, 3)
    small, info = open_image(content, 3, at_least=128)
    assert full.size == (1200, 1600) and small.size == (150, 200)  # libjpeg's 1/8, upright, both sides >= 128
    assert (info["width"], info["height"]) == (1600, 1200)  # what the file is, not what was decoded
    decoded, _ = decode_image(content, 3, 64, 48)
    reference = resized_pixels(full, 48, 64)
    assert np.abs(decoded.astype(int) - reference.astype(int)).mean() < 2
    assert decoded[:8].mean() > 240  # the white band, now on top


def test_damaged_files_are_skipped_with_reasons(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "pets", per_class=3)
    jpeg = write_image(tmp_path / "whole.jpg", COLOURS["cats"], size=(64, 64)).read_bytes()
    (root / "train" / "cats" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "train" / "cats" / "empty.jpg").write_bytes(b"")
    (root / "train" / "dogs" / "notes.jpg").write_text("not an image at all")
    write_image(root / "train" / "dogs" / "huge.png", COLOURS["dogs"], size=(300, 300))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200 * 200)
    source = load(root, tmp_path)
    reasons = dict(source.skipped)
    assert set(reasons) == {os.path.join("train", n) for n in ("cats/truncated.jpg", "cats/empty.jpg", "dogs/notes.jpg",
                                                                "dogs/huge.png")}
    assert "empty file" in reasons[os.path.join("train", "cats", "empty.jpg")]
    assert "truncated" in reasons[os.path.join("train", "cats", "truncated.jpg")]
    assert "not an image" in reasons[os.path.join("train", "dogs", "notes.jpg")]
    assert "decompression bomb" in reasons[os.path.join("train", "dogs", "huge.png")]
    assert len(source.train) == 6  # the three good images of each class, and nothing else
    assert sorted(os.path.basename(p) for p in source.train.paths) == [f"{c}{i}.png" for c in ("cats", "dogs")
                                                                       for i in range(3)]
    assert any(w.startswith("skipped 4 unusable files") for w in source.warnings)


def test_a_split_of_only_damaged_files_is_dropped_with_a_warning(tmp_path):
    import shutil
    root = make_image_folder(tmp_path / "pets", per_class=3)
    for name in ("cats", "dogs"):
        shutil.rmtree(root / "test" / name)
        (root / "test" / name).mkdir()
        (root / "test" / name / "empty.jpg").write_bytes(b"")
    source = load(root, tmp_path)
    assert source.test is None and len(source.validation) == 6
    assert any("the test split has no usable images" in warning for warning in source.warnings)


def test_an_empty_class_is_left_out_with_a_warning_and_one_class_an_error(tmp_path):
    root = make_image_folder(tmp_path / "pets", splits=("train", "test"), classes=("birds", "cats", "dogs"), per_class=2)
    for path in (root / "train" / "birds").iterdir():
        path.unlink()
    source = load(root, tmp_path)
    assert source.class_names == ["cats", "dogs"] and source.train.class_counts() == [2, 2]
    assert source.test.class_counts() == [2, 2] and all("birds" not in path for path in source.test.paths)
    assert ("class 'birds' has no usable training images: it is left out of the run (and its 2 test images); "
            "the network learns the other 2") in source.warnings
    for path in (root / "train" / "dogs").iterdir():
        path.unlink()
    with pytest.raises(SmallvisionError, match="1 class with usable training images .* needs at least two"):
        load(root, tmp_path)


def test_data_check_and_train_say_the_same_of_an_empty_class_folder(tmp_path, capsys):
    from smallvision.cli import main

    root = make_image_folder(tmp_path / "pets", splits=("train", "test"), classes=("birds", "cats", "dogs"), per_class=4)
    for path in (root / "train" / "birds").iterdir():
        path.unlink()
    said = "warning: class 'birds' has no usable training images: it is left out of the run (and its 4 test images)"
    main(["data", "check", str(root), "--image-size", "32", "--cache-dir", str(tmp_path / "cache")])
    checked = capsys.readouterr()
    assert said in checked.out + checked.err and "ready to train" in checked.out
    main(["train", str(root), "--recipe", "seed-catsdogs", "--image-size", "64", "--epochs", "1", "--steps-per-epoch", "1",
          "--val-split", "0", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    trained = capsys.readouterr()
    assert said in trained.err
    run = sv.load_run(tmp_path / "run")
    assert run.class_names == ["cats", "dogs"] and run.meta.output_activation == "sigmoid"


def test_evaluate_scores_a_folder_of_class_folders_whole(tmp_path, capsys):
    from smallvision.cli import main

    run = sv.train(make_image_folder(tmp_path / "pets"), "seed-catsdogs", out=tmp_path / "run", image_size=64,
                   epochs=1, steps_per_epoch=1, progress=False, cache_dir=tmp_path / "cache")
    new_photos = make_image_folder(tmp_path / "new_photos", splits=(), per_class=5)  # ROOT/CLASS/*, no split folders
    main(["evaluate", str(run.path), str(new_photos), "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert f"{new_photos} all: accuracy" in out and "(10 images; scored whole: every image" in out
    assert (run.path / "eval-new_photos-all" / "metrics.json").is_file()
    assert run.evaluate(new_photos, cache_dir=tmp_path / "cache")["images"] == 10
    assert run.evaluate(cache_dir=tmp_path / "cache")["images"] == 12  # its own source: still its test split


def test_no_class_folders_is_a_clear_error(tmp_path):
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "a.png", COLOURS["cats"])
    with pytest.raises(SmallvisionError, match="1 image.* but no class folders: put each class's images in a folder"):
        load(tmp_path / "flat", tmp_path)


def test_the_cache_is_hit_then_missed_after_a_change(tmp_path):
    root = make_image_folder(tmp_path / "pets", per_class=3)
    first = load(root, tmp_path)
    cached = list((tmp_path / "cache" / "decoded").glob("*.pixels"))
    assert len(cached) == 1
    from smallvision.data.cache import decode_files

    paths = first.train.paths
    _, pixels, stats = decode_files(root, paths, SHAPE, tmp_path / "cache", progress=False)
    assert (stats.decoded, stats.reused) == (0, len(paths))
    assert (pixels == first.train.images).all()
    changed = root / paths[0]
    write_image(changed, COLOURS["dogs"], seed=99)
    os.utime(changed, ns=(1, 1))  # a new modification time, whatever the clock's resolution
    _, pixels, stats = decode_files(root, paths, SHAPE, tmp_path / "cache", progress=False)
    assert (stats.decoded, stats.reused) == (1, len(paths) - 1)
    assert not (pixels[0] == first.train.images[0]).all() and (pixels[1:] == first.train.images[1:]).all()
    _, _, stats = decode_files(root, paths, (3, 16, 16), tmp_path / "cache", progress=False)
    assert stats.decoded == len(paths)  # another size is another cache entry


def test_a_damaged_cache_is_decoded_again(tmp_path):
    root = make_image_folder(tmp_path / "pets", per_class=2)
    first = load(root, tmp_path)
    for path in (tmp_path / "cache" / "decoded").glob("*.*"):
        path.write_bytes(b"garbage")
    again = load(root, tmp_path)
    assert (again.train.images == first.train.images).all()


def test_a_split_is_a_view_of_the_memory_mapped_cache(tmp_path):
    root = make_image_folder(tmp_path / "pets", per_class=3)
    first = load(root, tmp_path)
    again = load(root, tmp_path)  # from the cache: every split a slice of one mapped file, nothing copied
    storages = {split.images.untyped_storage().data_ptr() for split in again.splits().values()}
    assert len(storages) == 1 and all(not split.images.untyped_storage().resizable()
                                      for split in again.splits().values())
    for name, split in again.splits().items():
        assert torch.equal(split.images, first.split(name).images)


def test_an_interrupted_first_decode_continues_where_it_stopped(tmp_path, monkeypatch):
    from smallvision.data import cache

    root = make_image_folder(tmp_path / "pets", per_class=10)  # 60 files
    monkeypatch.setattr(cache, "CHUNK", 8)
    real, calls = cache.decode_image, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt  # Ctrl-C during the first decode
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "decode_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(root, tmp_path)
    monkeypatch.setattr(cache, "decode_image", real)
    paths = [str(path.relative_to(root)) for path in sorted(root.rglob("*.png"))]
    _, _, stats = cache.decode_files(root, paths, SHAPE, tmp_path / "cache", progress=False)
    assert stats.reused == 16 and stats.decoded == 44  # two whole chunks were kept; the rest decoded now
    again = load(root, tmp_path)
    fresh = open_source(root, image_shape=SHAPE, cache_dir=tmp_path / "other-cache")
    for name, split in again.splits().items():
        assert torch.equal(split.images, fresh.split(name).images) and split.paths == fresh.split(name).paths


def test_a_disk_too_small_for_the_cache_stops_before_decoding(tmp_path, monkeypatch):
    from collections import namedtuple

    from smallvision.data import cache

    root = make_image_folder(tmp_path / "pets", per_class=3)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: usage(10_000, 9_000, 1_000))
    with pytest.raises(SmallvisionError, match=r"decoding 18 images at 3x24x24 needs 31.1 kB .* only 1.0 kB is free "
                                               r"there: make room, or choose another place with --cache-dir"):
        load(root, tmp_path)


def test_a_folder_over_the_memory_budget_trains_from_the_map_to_the_same_weights(tmp_path, capsys):
    root = make_image_folder(tmp_path / "pets", per_class=20)
    options = dict(image_size=48, epochs=2, steps_per_epoch=6, batch_size=8, progress=False, cache_dir=tmp_path / "cache",
                   precision="fp32", rotation_range=10.0)  # 40 training images, 5 batches: each epoch begins another pass
    held = sv.train(root, "seed-catsdogs", out=tmp_path / "held", **options)
    with pytest.raises(SmallvisionError, match=r"--memory-budget 10kB is smaller than one batch \(8 images of "
                                               r"3x48x48: 55.3 kB\); give at least that, or a smaller --batch-size"):
        sv.train(root, "seed-catsdogs", out=tmp_path / "refused", memory_budget="10kB", **options)
    streamed = sv.train(root, "seed-catsdogs", out=tmp_path / "streamed", memory_budget="100kB", **options)
    assert "more than the memory budget (100.0 kB): training reads batches from the memory-mapped decode cache" \
        in capsys.readouterr().err
    assert streamed.metrics["streamed_from_cache"] is True and "streamed_from_cache" not in held.metrics
    for name, tensor in held.model.state_dict().items():
        assert torch.equal(tensor, streamed.model.state_dict()[name]), name
    assert streamed.metrics["test_accuracy"] == held.metrics["test_accuracy"]


def test_held_out_splits_of_a_mapped_folder_are_views_by_row_and_train_as_in_memory(tmp_path):
    root = make_image_folder(tmp_path / "pets", splits=(), per_class=20)  # ROOT/CLASS: test and validation held out
    source = open_source(root, val_split=0.2, test_split=0.2, image_shape=(3, 48, 48), cache_dir=tmp_path / "cache")
    whole = source.train.store
    for split in source.splits().values():  # each split reads the one mapped file through its own rows
        assert split.mapped and split.store is whole and split.rows is not None
    assert sorted(torch.cat([s.rows for s in source.splits().values()]).tolist()) == list(range(40))
    test = source.test
    assert torch.equal(test.take(torch.tensor([1, 0])), whole[test.rows[[1, 0]]])
    assert torch.equal(torch.cat([chunk for _, chunk in test.chunks(3)]), test.images)
    options = dict(image_size=48, epochs=2, steps_per_epoch=4, batch_size=8, progress=False, cache_dir=tmp_path / "cache",
                   precision="fp32", val_split=0.2, test_split=0.2)  # 24 training images, 3 batches: a pass and more
    held = sv.train(root, "seed-catsdogs", out=tmp_path / "held", **options)
    streamed = sv.train(root, "seed-catsdogs", out=tmp_path / "streamed", memory_budget="100kB", **options)
    assert streamed.metrics["streamed_from_cache"] is True
    for name, tensor in held.model.state_dict().items():
        assert torch.equal(tensor, streamed.model.state_dict()[name]), name
    assert streamed.metrics["test_accuracy"] == held.metrics["test_accuracy"]
    assert streamed.metrics["val_loss"] == held.metrics["val_loss"]


def test_mapped_batches_read_each_process_share_and_the_next_batch_ahead(monkeypatch):
    """The streamed reader: the second of two processes gets the second half of every batch of the shared
    order, the next batch is read while this one trains, and the order is copied to the host once."""
    from smallvision.data.imageset import ImageSet
    from smallvision.distributed import Ranks
    from smallvision.loop import MappedBatches

    images = ImageSet(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous(),
                      torch.zeros(10, dtype=torch.long), ["a"])
    reader = MappedBatches(images, torch.device("cpu"), Ranks(rank=1, world=2))
    order = torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    copies = []
    original = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self: copies.append(1) or original(self))
    first = reader.read(order, 0, 4)
    assert first[:, 0, 0, 0].tolist() == [7, 6] and reader.ahead[0] == (id(order), 4)  # the next share asked for
    second = reader.read(order, 4, 4)
    assert second[:, 0, 0, 0].tolist() == [3, 2]
    assert reader.read(order, 8, 4)[:, 0, 0, 0].tolist() == [0] and reader.ahead is None  # a short last batch
    assert len(copies) == 1


def test_a_view_of_the_map_reads_the_same_rows_on_one_thread_as_with_torch(tmp_path):
    """The background reader's copy (numpy's take, on its own thread) picks the rows torch's would."""
    import numpy as np

    from smallvision.data.imageset import ImageSet

    written = np.memmap(tmp_path / "pixels", dtype=np.uint8, mode="w+", shape=(20, 3, 4, 4))
    written[:] = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
    written.flush()
    store = torch.from_numpy(np.memmap(tmp_path / "pixels", dtype=np.uint8, mode="c", shape=(20, 3, 4, 4)))
    split = ImageSet(store, torch.zeros(5, dtype=torch.long), ["a"], rows=torch.tensor([3, 17, 5, 11, 0]))
    picked = torch.tensor([4, 1, 1, 2])
    on_one_thread = split.take(picked, one_thread=True)
    assert on_one_thread[:, :, 0, 0].tolist() == [[0] * 3, [17] * 3, [17] * 3, [5] * 3]
    assert torch.equal(on_one_thread, split.take(picked))


def test_the_memory_budget_is_the_machines_so_each_process_copy_counts():
    from smallvision.data.cache import data_path

    assert data_path(600_000, "1MB") == (False, "the images take 600.0 kB, within the memory budget (1.0 MB): "
                                                "they are held in memory")
    streaming, why = data_path(600_000, "1MB", copies=2)
    assert streaming and why.startswith("the images take 600.0 kB in each of 2 processes, more than the memory budget")


def test_records_no_file_uses_are_compacted_away_and_the_split_is_a_view_again(tmp_path):
    from smallvision.data.cache import decode_files
    from smallvision.images import load_image

    root = make_image_folder(tmp_path / "pets", splits=("train",), per_class=4)
    paths = load(root, tmp_path).train.paths
    decoded = tmp_path / "cache" / "decoded"
    for round_, changed in ((1, paths[:3]), (2, paths)):  # 3 unused records: kept; then 11 against 8 live: compacted
        for path in changed:
            write_image(root / path, COLOURS["dogs"], seed=100 + round_)
            os.utime(root / path, ns=(round_, round_))
        _, pixels, stats = decode_files(root, paths, SHAPE, tmp_path / "cache", progress=False)
        assert stats.decoded == len(changed)
        files = sorted(decoded.glob("*.pixels"))
        assert len(files) == 1 and files[0].name.endswith(".pixels" if round_ == 1 else ".1.pixels")
    index = json.loads(next(decoded.glob("*.json")).read_text())
    assert index["pixels"] == files[0].name and index["rows"] == len(paths)  # only the live records are left
    assert files[0].stat().st_size == len(paths) * 3 * SHAPE[1] * SHAPE[2]
    _, again, stats = decode_files(root, paths, SHAPE, tmp_path / "cache", progress=False)
    assert stats.reused == len(paths) and torch.equal(again, pixels)
    assert not again.untyped_storage().resizable()  # in the folder's order again: a view of the map
    for path, image in zip(paths, again):
        assert torch.equal(image, load_image(root / path, *SHAPE))


def test_a_split_is_fingerprinted_by_its_files_hashes_and_a_run_from_before_by_its_pixels(tmp_path):
    import hashlib

    from smallvision.data.sources import split_fingerprints

    root = make_image_folder(tmp_path / "pets", per_class=3)
    source = load(root, tmp_path)
    by_files, by_pixels = split_fingerprints(source), split_fingerprints(source, by_pixels=True)
    train = source.train
    digest = hashlib.blake2b(train.images.numpy().tobytes(), digest_size=16)  # the fingerprint runs were made with
    digest.update(train.labels.numpy().tobytes())
    assert by_pixels["train"] == digest.hexdigest() != by_files["train"]
    changed = root / train.paths[0]
    write_image(changed, COLOURS["dogs"], seed=77)
    os.utime(changed, ns=(5, 5))
    again = split_fingerprints(load(root, tmp_path))
    assert again["train"] != by_files["train"]
    assert again["validation"] == by_files["validation"] and again["test"] == by_files["test"]
