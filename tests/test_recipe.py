import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from smallvision.errors import SmallvisionError
from smallvision.recipe import (FIELD_TYPES, FLAT, GROUPS, Augment, FineTune, Preprocess, Recipe, builtin_recipes,
                                flat_names, load_recipe)

DATA = Path(__file__).parent / "data"


def test_seed_mnist_is_the_seeds_training():
    recipe = load_recipe("seed-mnist")
    optimizer = recipe.optimizer
    assert (optimizer.name, optimizer.learning_rate, optimizer.rho, optimizer.epsilon) == ("rmsprop", 1e-3, 0.9, 1e-7)
    assert (optimizer.batch_size, recipe.schedule.epochs, recipe.schedule.name) == (64, 5, "constant")
    assert recipe.preprocess.rescale == pytest.approx(1 / 255)


def test_toml_round_trip_and_file_loading(tmp_path):
    recipe = Recipe(name="mine").replace(optimizer="adamw", learning_rate=3e-3, epochs=2, schedule="onecycle",
                                         warmup=0.2)
    (tmp_path / "mine.toml").write_text(recipe.to_toml())
    assert load_recipe(str(tmp_path / "mine.toml")) == recipe
    finetune = load_recipe("catsdogs-finetune")
    assert "model =" not in finetune.to_toml() and 'backbone = "efficientnet_lite0"' in finetune.to_toml()
    assert Recipe.from_toml(finetune.to_toml()) == finetune


def test_overrides_and_their_checks():
    recipe = load_recipe("seed-mnist").replace(epochs=2, learning_rate=1, seed=None)
    assert recipe.schedule.epochs == 2 and recipe.optimizer.learning_rate == 1.0
    assert isinstance(recipe.optimizer.learning_rate, float)
    with pytest.raises(SmallvisionError, match="unknown recipe field 'epoch': did you mean 'epochs'"):
        recipe.replace(epoch=3)
    with pytest.raises(SmallvisionError, match="epochs must be at least 1"):
        recipe.replace(epochs=0)
    with pytest.raises(SmallvisionError, match="'batch_size' must be int"):
        recipe.replace(batch_size="big")
    with pytest.raises(SmallvisionError, match="unknown optimizer 'rmsporp': did you mean 'rmsprop'"):
        recipe.replace(optimizer="rmsporp")


def test_bad_toml_names_the_file(tmp_path):
    (tmp_path / "bad.toml").write_text("epochs = = 3")
    with pytest.raises(SmallvisionError, match="bad.toml: not valid TOML"):
        load_recipe(str(tmp_path / "bad.toml"))


def test_every_builtin_loads_and_names_itself():
    recipes = builtin_recipes()
    assert {"seed-mnist", "fast-mnist"} <= set(recipes)
    assert all(recipe.name == name and recipe.description for name, recipe in recipes.items())


def test_every_field_has_one_flat_name_and_one_place():
    assert sorted(FLAT.values()) == sorted(FIELD_TYPES) and len(FLAT) == len(FIELD_TYPES) == 52
    assert set(GROUPS) == {"network", "data", "augment", "preprocess", "optimizer", "schedule", "fine_tune", "run"}
    assert [f.name for f in dataclasses.fields(Recipe)] == ["name", "description", *GROUPS]
    assert (FLAT["rotation_range"], FLAT["optimizer"], FLAT["schedule"], FLAT["fine_tune_learning_rate"]) == \
        ("augment.rotation_range", "optimizer.name", "schedule.name", "fine_tune.learning_rate")


def test_the_groups_are_the_classes_the_code_uses():
    recipe = load_recipe("catsdogs")
    assert isinstance(recipe.augment, Augment) and isinstance(recipe.preprocess, Preprocess)
    import smallvision.augment
    import smallvision.inference

    assert smallvision.augment.Augment is Augment and smallvision.inference.Preprocess is Preprocess
    assert recipe.augment.zoom_bounds == (0.75, 1.2) and recipe.augment.active and recipe.augment.moves_pixels
    assert not Recipe().augment.active and Recipe().replace(brightness_range=[0.5, 1.5]).augment.active
    assert not Recipe().replace(brightness_range=[0.5, 1.5]).augment.moves_pixels
    import torch

    pixels = torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).view(2, 3, 2, 2)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    x = Preprocess(rescale=1 / 255, mean=mean, std=std)(pixels)
    expected = (pixels.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x, expected) and x.is_contiguous(memory_format=torch.channels_last)


def test_flat_dotted_and_group_changes_are_the_same_change():
    seed = load_recipe("seed-mnist")
    flat = seed.replace(rotation_range=20, optimizer="adam", epochs=3, fine_tune_learning_rate=1e-4)
    dotted = seed.replace(**{"augment.rotation_range": 20, "optimizer.name": "adam", "schedule.epochs": 3,
                             "fine_tune.learning_rate": 1e-4})
    groups = seed.replace(augment=Augment(rotation_range=20), optimizer={"name": "adam"}, schedule={"epochs": 3},
                          fine_tune=FineTune(learning_rate=1e-4))
    assert flat == dotted == groups
    assert flat.augment.rotation_range == 20.0 and isinstance(flat.augment.rotation_range, float)
    assert flat.get("rotation_range") == flat.get("augment.rotation_range") == 20.0
    assert flat.get("optimizer") == "adam" and flat.get("name") == "seed-mnist"
    assert seed.network is flat.network and seed.augment is not flat.augment  # an untouched group is shared
    assert seed.replace(augment=Augment(), rotation_range=5).augment == Augment(rotation_range=5)  # fields on top
    with pytest.raises(dataclasses.FrozenInstanceError):
        flat.augment.rotation_range = 0
    # sv.train looks some changes up by flat name (layers, dropout, the held-out splits): dotted ones are renamed
    assert flat_names({"network.layers": "Flatten()", "epochs": 2, "augment": {}}) == \
        {"layers": "Flatten()", "epochs": 2, "augment": {}}
    with pytest.raises(SmallvisionError, match="'data.val_split' and 'val_split' are the same field"):
        flat_names({"data.val_split": 0.1, "val_split": 0.2})


def test_cross_group_checks_stay_in_the_recipe():
    with pytest.raises(SmallvisionError, match="backbone takes colour images"):
        load_recipe("catsdogs-finetune").replace(color_mode="grayscale")
    with pytest.raises(SmallvisionError, match="fine-tuning .* needs a network.backbone"):
        Recipe().replace(fine_tune_blocks=2, fine_tune_epochs=1)
    with pytest.raises(SmallvisionError, match="give both preprocess.mean and preprocess.std"):
        Recipe().replace(mean=0.5)
    assert Recipe().replace(early_stopping_patience=3).run.keep_best == "val_loss"  # Keras' EarlyStopping's default


def test_a_recipe_round_trips_through_grouped_toml(tmp_path):
    recipe = load_recipe("catsdogs").replace(
        description="every group changed", layers=["Flatten()", "Dense(2, activation='softmax')"], dropout=0.0,
        color_mode="rgb", val_split=0.1, memory_budget="1GB", brightness_range=[0.8, 1.2], cval=3,
        mean=[0.4, 0.5, 0.6], std=[0.2, 0.2, 0.2], channels_last=False, optimizer="sgd", momentum=0.9,
        batch_size=16, schedule="cosine", steps_per_epoch=7, seed=5, keep_best="val_accuracy",
        early_stopping_patience=2, test_time_flip=False)
    text = recipe.to_toml()
    assert all(f"\n[{table}]\n" in text for table in GROUPS)
    top = text.split("\n[")[0]
    assert top.splitlines() == ['name = "catsdogs"', 'description = "every group changed"']
    assert Recipe.from_toml(text) == recipe
    recipe.save(tmp_path / "saved.toml")
    assert load_recipe(str(tmp_path / "saved.toml")) == recipe
    for name, builtin in builtin_recipes().items():
        assert Recipe.from_toml(builtin.to_toml()) == builtin, name


def test_every_builtin_is_grouped_and_equals_its_flat_file_of_earlier_releases():
    """tests/data/flat_recipes/ holds the built-in recipes as they were written before the groups."""
    flat_files = sorted((DATA / "flat_recipes").glob("*.toml"))
    builtins = builtin_recipes()
    assert sorted(path.stem for path in flat_files) == sorted(builtins)
    for path in flat_files:
        assert load_recipe(str(path)) == builtins[path.stem], path.name
    import importlib.resources
    import tomllib

    for name in builtins:
        written = tomllib.loads((importlib.resources.files("smallvision") / "recipes" / f"{name}.toml").read_text())
        assert set(written) - {"name", "description"} <= set(GROUPS), name  # tables only


def test_the_flat_recipe_toml_of_an_earlier_run_reads():
    """Every run directory written before the groups holds a flat recipe.toml, every field in it (these two were
    written by the release before, as Recipe.to_toml wrote them)."""
    assert load_recipe(str(DATA / "run_recipe_seed_mnist.toml")) == load_recipe("seed-mnist")
    tuned = load_recipe(str(DATA / "run_recipe_catsdogs_finetune.toml"))
    assert tuned == load_recipe("catsdogs-finetune").replace(seed=3, epochs=2, zoom_range=0.1, keep_best="val_accuracy")
    assert (tuned.fine_tune.blocks, tuned.fine_tune.epochs, tuned.fine_tune.learning_rate) == (2, 6, 1e-4)


def test_a_flat_field_beside_its_group_must_agree(tmp_path):
    agreeing = 'epochs = 3\nrotation_range = 20\n\n[augment]\nrotation_range = 20.0\n\n[schedule]\nname = "cosine"\n'
    recipe = Recipe.from_toml(agreeing)
    assert (recipe.schedule.epochs, recipe.augment.rotation_range, recipe.schedule.name) == (3, 20.0, "cosine")
    (tmp_path / "mixed.toml").write_text("rotation_range = 20\n\n[augment]\nrotation_range = 10\n")
    with pytest.raises(SmallvisionError) as refused:
        load_recipe(str(tmp_path / "mixed.toml"))
    message = str(refused.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "mixed.toml"))
    assert "'rotation_range' and 'augment.rotation_range' are the same field, given 20.0 and 10.0" in message
    with pytest.raises(SmallvisionError, match="'epochs' and 'schedule.epochs' are the same field"):
        Recipe().replace(**{"epochs": 2, "schedule.epochs": 3})


@pytest.mark.parametrize("text, expected", [
    ("augment = 3", "recipe field 'augment' must be a table of augment settings ([augment] in TOML"),
    ('network = "small_resnet"', "recipe field 'network' must be a table of network settings"),
    ("[run]\nseed = 1\n[run.more]\nx = 1", "unknown recipe field 'run.more'"),
    ("rotation = 20", "unknown recipe field 'rotation': did you mean 'rotation_range' or 'augment.rotation_range'"),
    ("[augment]\nrotaton_range = 20", "unknown recipe field 'augment.rotaton_range': did you mean "
                                      "'augment.rotation_range'"),
    ("[schedule]\nepoch = 2", "unknown recipe field 'schedule.epoch': did you mean 'schedule.epochs'"),
    ("fine_tune_epoch = 2", "did you mean 'fine_tune_epochs'"),
    ("optimizer = 3", "recipe field 'optimizer' must be str, got 3"),
    ("[optimizer]\nbatch_size = 0", "optimizer.batch_size must be at least 1, got 0"),
    ("[augment]\nfill_mode = 'wrapp'", "unknown fill_mode 'wrapp': did you mean 'wrap'"),
])
def test_bad_grouped_and_flat_input_is_one_line_naming_the_file(tmp_path, text, expected):
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(SmallvisionError) as refused:
        load_recipe(str(tmp_path / "bad.toml"))
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'bad.toml'}: ") and expected in message, message


def test_a_group_of_the_wrong_type_in_python_is_named():
    with pytest.raises(SmallvisionError, match="recipe field 'augment' must be a table of augment settings"):
        Recipe(augment=Preprocess())
    with pytest.raises(SmallvisionError, match="recipe field 'preprocess' must be a table"):
        Recipe().replace(preprocess=[1 / 255])


def test_reading_recipes_imports_no_pytorch():
    script = ("import sys\nfrom smallvision.recipe import builtin_recipes, load_recipe\n"
              "builtin_recipes()\nprint(load_recipe('catsdogs').one_line())\n"
              "assert 'torch' not in sys.modules, 'torch imported'\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
