import pytest

from smallvision.errors import SmallvisionError
from smallvision.recipe import Recipe, builtin_recipes, load_recipe


def test_seed_mnist_is_the_seeds_training():
    recipe = load_recipe("seed-mnist")
    assert (recipe.optimizer, recipe.learning_rate, recipe.rho, recipe.epsilon) == ("rmsprop", 1e-3, 0.9, 1e-7)
    assert (recipe.batch_size, recipe.epochs, recipe.schedule) == (64, 5, "constant")
    assert recipe.rescale == pytest.approx(1 / 255)


def test_toml_round_trip_and_file_loading(tmp_path):
    recipe = Recipe(name="mine", optimizer="adamw", learning_rate=3e-3, epochs=2, schedule="onecycle", warmup=0.2)
    (tmp_path / "mine.toml").write_text(recipe.to_toml())
    assert load_recipe(str(tmp_path / "mine.toml")) == recipe
    finetune = load_recipe("catsdogs-finetune")
    assert "model =" not in finetune.to_toml() and 'backbone = "efficientnet_lite0"' in finetune.to_toml()
    assert Recipe.from_toml(finetune.to_toml()) == finetune


def test_overrides_and_their_checks():
    recipe = load_recipe("seed-mnist").replace(epochs=2, learning_rate=1, seed=None)
    assert recipe.epochs == 2 and recipe.learning_rate == 1.0 and isinstance(recipe.learning_rate, float)
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
