import numpy as np
import pytest
import torch
from conftest import write_idx_source

import smallvision.data.mnist as mnist
from smallvision.data import open_source, stratified_split
from smallvision.errors import SmallvisionError


def test_idx_directory_with_class_names(tiny_source):
    (tiny_source / "classes.txt").write_text("cat\ndog\nbird\n")
    source = open_source(tiny_source)
    assert source.class_names == ["cat", "dog", "bird"]
    assert source.train.images.shape == (60, 1, 28, 28) and source.train.images.dtype == torch.uint8
    assert source.test.labels.tolist()[:4] == [0, 1, 2, 0]


def test_class_names_default_to_label_numbers(tiny_source):
    assert open_source(tiny_source).class_names == ["0", "1", "2"]


def test_labels_out_of_range_are_refused(tiny_source):
    (tiny_source / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(SmallvisionError, match=r"label 2 is out of range for 2 classes"):
        open_source(tiny_source)


def test_image_and_label_counts_must_agree(tmp_path):
    images = np.zeros((5, 28, 28), np.uint8)
    write_idx_source(tmp_path, images, np.zeros(4, np.uint8), images, np.zeros(5, np.uint8))
    with pytest.raises(SmallvisionError, match=r"\(train split\): 5 images but 4 labels"):
        open_source(tmp_path)


def test_val_split_is_stratified_and_seeded(tiny_source):
    source = open_source(tiny_source, val_split=0.2, seed=3)
    assert len(source.validation) == 12 and len(source.train) == 48
    assert torch.bincount(source.validation.labels).tolist() == [4, 4, 4]
    kept, held = stratified_split(torch.arange(100) % 4, 0.25, seed=7)
    assert set(kept.tolist()).isdisjoint(held.tolist()) and len(kept) + len(held) == 100
    assert torch.equal(held, stratified_split(torch.arange(100) % 4, 0.25, seed=7)[1])
    assert not torch.equal(held, stratified_split(torch.arange(100) % 4, 0.25, seed=8)[1])


def test_a_small_class_still_has_an_image_on_each_side_of_a_split():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    kept, held = stratified_split(labels, 0.15, seed=0)  # 15% of 2 or 3 images rounds to none
    assert torch.bincount(labels[held], minlength=3).tolist() == [1, 1, 0]  # a lone image stays in train
    assert torch.bincount(labels[kept], minlength=3).tolist() == [1, 2, 1]
    kept, held = stratified_split(labels[:2], 0.9, seed=0)
    assert len(kept) == 1 and len(held) == 1


def test_holding_out_from_single_images_is_a_clear_error(tmp_path):
    from conftest import make_image_folder
    flat = make_image_folder(tmp_path / "flat", splits=(), per_class=1)
    with pytest.raises(SmallvisionError, match="too few training images to hold out a test split .* --test-split 0"):
        open_source(flat, test_split=0.2, image_shape=(3, 16, 16), cache_dir=tmp_path / "cache")


def test_mnist_is_looked_for_in_order(tiny_source, tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLVISION_DATA", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("SMALLVISION_CACHE", str(tmp_path / "cache"))
    assert mnist.mnist_search_path(tiny_source) == [tiny_source, tmp_path / "elsewhere" / "mnist", tmp_path / "cache" / "mnist"]
    assert mnist.locate_mnist(tiny_source) == tiny_source


def test_offline_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.delenv("SMALLVISION_DATA", raising=False)
    monkeypatch.setenv("SMALLVISION_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SmallvisionError) as caught:
        mnist.locate_mnist(None, mirrors=("http://127.0.0.1:9/",))
    message = str(caught.value)
    assert "download of train-images-idx3-ubyte.gz failed" in message
    assert str(tmp_path / "cache" / "mnist") in message and "--data DIR" in message
    assert not list((tmp_path / "cache" / "mnist").iterdir())  # no partial file left behind


def test_download_keeps_only_verified_files(tmp_path):
    payload = tmp_path / "served.gz"
    payload.write_bytes(b"not the real thing")
    with pytest.raises(ValueError, match="checksum mismatch"):
        mnist.fetch_verified(payload.as_uri(), tmp_path / "got.gz", "0" * 32)
    assert not (tmp_path / "got.gz").exists() and not (tmp_path / "got.gz.part").exists()
    import hashlib
    mnist.fetch_verified(payload.as_uri(), tmp_path / "got.gz", hashlib.md5(payload.read_bytes()).hexdigest())
    assert (tmp_path / "got.gz").read_bytes() == payload.read_bytes()


def test_unknown_and_missing_sources(tmp_path):
    with pytest.raises(SmallvisionError, match="unknown source 'minst': did you mean 'mnist'"):
        open_source("minst")
    with pytest.raises(SmallvisionError, match="no such directory"):
        open_source(str(tmp_path / "nothing"))
    with pytest.raises(SmallvisionError, match="no data source found here"):
        open_source(tmp_path)


def test_without_a_recipe_digits_get_the_seeds_and_photos_a_pretrained_one(tiny_source, tmp_path):
    from conftest import make_image_folder

    from smallvision.workflow import default_recipe
    assert default_recipe("mnist") == "seed-mnist"
    assert default_recipe(tiny_source) == "seed-mnist"
    assert default_recipe(make_image_folder(tmp_path / "photos")) == "catsdogs-finetune"
    assert default_recipe(make_image_folder(tmp_path / "flat", splits=())) == "catsdogs-finetune"


def test_a_builtin_recipe_holds_out_what_a_photo_folder_lacks(tmp_path):
    from conftest import make_image_folder

    from smallvision.recipe import load_recipe
    from smallvision.workflow import held_out_splits
    flat = make_image_folder(tmp_path / "flat", splits=())
    no_test = make_image_folder(tmp_path / "no_test", splits=("train", "validation"))
    complete = make_image_folder(tmp_path / "complete")
    recipe = load_recipe("seed-catsdogs")
    assert held_out_splits(flat, "seed-catsdogs", recipe, {}) == {"test_split": 0.15, "val_split": 0.15}
    assert held_out_splits(no_test, "seed-catsdogs", recipe, {}) == {"test_split": 0.15}
    assert held_out_splits(complete, "seed-catsdogs", recipe, {}) == {}
    assert held_out_splits(flat, "seed-catsdogs", recipe, {"val_split": 0.0}) == {"test_split": 0.15}  # chosen: kept
    assert held_out_splits(flat, recipe, recipe, {}) == {}  # a recipe object or file is taken as written
    assert held_out_splits(flat, "seed-catsdogs", recipe.replace(test_split=0.3), {}) == {"val_split": 0.15}
