"""The default for a folder of photos, chosen within a time budget from this machine's rates."""

import json

import pytest

from conftest import make_image_folder
from smallvision.budget import (CANDIDATES, HEAD_SECONDS, Counts, Rates, choose, counts_of, estimate_seconds,
                                measure_rates, parse_budget, say_time)
from smallvision.cli import main
from smallvision.errors import SmallvisionError
from smallvision.recipe import load_recipe

SHARED = Counts(train=2000, validation=1000, test=1000)  # the shared cats-vs-dogs folder


@pytest.mark.parametrize("text, seconds", [("5m", 300), ("90s", 90), ("1h", 3600), ("1.5h", 5400), ("300", 300),
                                           (" 2 min ", 120), (45, 45)])
def test_a_budget_is_read_in_the_units_people_write(text, seconds):
    assert parse_budget(text) == seconds


def test_none_is_no_limit():
    assert parse_budget("none") is None and parse_budget("None") is None


@pytest.mark.parametrize("text", ["soon", "5 minutes", "-5m", "0", "0s", "m"])
def test_a_budget_that_cannot_be_read_is_one_line(text):
    with pytest.raises(SmallvisionError, match="--budget") as caught:
        parse_budget(text)
    assert "\n" not in str(caught.value)


def test_features_cost_one_pass_over_every_photo_then_the_head():
    rates = Rates(forward=100.0, frozen_step=50.0, tuning_step=20.0)
    assert estimate_seconds(load_recipe("catsdogs-features"), SHARED, rates) == pytest.approx(4000 / 100 + HEAD_SECONDS)


def test_fine_tuning_costs_both_stages_and_the_flipped_evaluations():
    rates = Rates(forward=100.0, frozen_step=50.0, tuning_step=20.0)
    # stage one: 4 epochs at 50/s, validation at epochs 2 and 4; stage two: 6 epochs at 20/s, validation at
    # 2, 4 and 6; the test once; every evaluation twice (test-time flip)
    expected = 4 * 2000 / 50 + 2 * 1000 * 2 / 100 + 6 * 2000 / 20 + 3 * 1000 * 2 / 100 + 1000 * 2 / 100
    assert estimate_seconds(load_recipe("catsdogs-finetune"), SHARED, rates) == pytest.approx(expected)


def test_the_estimate_follows_the_users_overrides():
    rates = Rates(forward=100.0, frozen_step=50.0, tuning_step=20.0)
    short = choose(SHARED, rates, None, {"fine_tune_epochs": 1})
    full = choose(SHARED, rates, None, {})
    assert short.estimates["catsdogs-finetune"] < full.estimates["catsdogs-finetune"] - 400


@pytest.mark.parametrize("rates, chosen", [
    (Rates(forward=2000.0, frozen_step=1000.0, tuning_step=400.0), "catsdogs-finetune"),  # a GPU, a bf16 CPU
    (Rates(forward=150.0, frozen_step=120.0, tuning_step=25.0), "catsdogs-features-augment"),
    (Rates(forward=60.0, frozen_step=40.0, tuning_step=12.0), "catsdogs-features"),  # an AVX2 laptop
])
def test_the_best_recipe_that_fits_the_budget_is_chosen(rates, chosen):
    choice = choose(SHARED, rates, 180.0)
    assert choice.recipe == chosen
    assert choice.estimates[chosen] <= 180.0
    better = CANDIDATES[:CANDIDATES.index(chosen)]
    assert all(choice.estimates[name] > 180.0 for name in better)
    assert "using it" in choice.line and chosen in choice.line and "\n" not in choice.line
    for name in better:  # what it gave up, and how to have it anyway
        assert f"{name} (" in choice.line
    if better:
        assert "--recipe catsdogs-finetune" in choice.line


def test_no_budget_keeps_fine_tuning_whatever_it_costs():
    slow = Rates(forward=1.0, frozen_step=1.0, tuning_step=1.0)
    assert choose(SHARED, slow, None).recipe == "catsdogs-finetune"


def test_a_budget_too_small_for_any_recipe_says_what_the_cheapest_would_take():
    rates = Rates(forward=60.0, frozen_step=40.0, tuning_step=12.0)
    cheapest = estimate_seconds(load_recipe("catsdogs-features"), SHARED, rates)
    with pytest.raises(SmallvisionError) as caught:
        choose(SHARED, rates, 10.0)
    message = str(caught.value)
    assert "catsdogs-features" in message and say_time(cheapest) in message and "\n" not in message



def test_the_default_budget_too_small_trains_the_quickest_and_says_so():
    rates = Rates(forward=60.0, frozen_step=40.0, tuning_step=12.0)  # a machine slower than the default allows
    chosen = choose(SHARED, rates, 10.0, given=False)
    assert chosen.recipe == "catsdogs-features" and "over the default budget" in chosen.line
    assert say_time(chosen.estimates["catsdogs-features"]) in chosen.line and "--budget none" in chosen.line


def test_held_out_splits_are_counted_as_the_run_will_carve_them():
    assert counts_of({"train": 1000}, 0.15, 0.15) == Counts(train=722, validation=128, test=150)
    assert counts_of({"train": 2000, "validation": 1000, "test": 1000}, 0.15, 0.15) == SHARED
    assert counts_of({"train": 1000, "test": 200}, 0, 0) == Counts(train=1000, validation=0, test=200)


def test_the_rates_are_measured_as_positive_images_per_second():
    import torch

    recipe = load_recipe("catsdogs-finetune").replace(image_size=64)
    rates = measure_rates(recipe, torch.device("cpu"), "fp32", batch=8, repeats=3)  # the fastest of 3: noise-proof
    assert rates.forward > 0 and rates.frozen_step > 0 and rates.tuning_step > 0
    assert rates.forward > rates.tuning_step  # a forward pass is cheaper than a fine-tuning step


@pytest.mark.parametrize("argv, said", [
    (["--budget", "5m", "--recipe", "catsdogs-features"], "--recipe catsdogs-features names one"),
    (["--budget", "soon"], "--budget 'soon'"),
    (["--budget", "0"], "more than no time"),
])
def test_bad_budgets_are_one_line_and_exit_2(argv, said, tmp_path, capsys):
    folder = make_image_folder(tmp_path / "photos")
    assert main(["train", str(folder), "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_budget_for_digits_is_refused(tiny_source, tmp_path, capsys):
    assert main(["train", str(tiny_source), "--budget", "5m", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not" in err and "folder of photos" in err and len(err.splitlines()) == 1


def test_the_default_for_photos_says_its_choice_and_records_it(tmp_path, capsys, monkeypatch):
    """A tiny folder, this machine's rates made up in the cache: the line comes first and the run keeps it."""
    import torch

    from smallvision import budget
    from smallvision.budget import RATES_FORMAT, machine_key

    monkeypatch.setattr(budget, "forward_rate_now", lambda *args: 1.0)  # the made-up rates pass the check
    from smallvision.models import with_backbone_preprocessing

    folder = make_image_folder(tmp_path / "photos", per_class=4)
    cache = tmp_path / "cache"
    cache.mkdir()
    probe = with_backbone_preprocessing(load_recipe("catsdogs-finetune").replace(epochs=1))
    key = machine_key(probe, torch.device("cpu"), "fp32", torch.get_num_threads())
    # slow enough that fine-tuning 8 photos (and even augmenting them) misses a 60 s budget
    (cache / "throughput.json").write_text(json.dumps(
        {"format": RATES_FORMAT, key: {"forward": 1.0, "frozen_step": 0.1, "tuning_step": 0.05}}))
    code = main(["train", str(folder), "--budget", "60s", "--epochs", "1", "--precision", "fp32",
                 "--out", str(tmp_path / "run"), "--cache-dir", str(cache)])
    assert code == 0
    said = capsys.readouterr().err.splitlines()
    assert said[0].startswith("catsdogs-finetune (fine-tuning) would take about")
    assert "catsdogs-features (frozen features with a head) about" in said[0] and "using it" in said[0]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["recipe_choice"]["recipe"] == "catsdogs-features"
    assert metrics["recipe_choice"]["budget_seconds"] == 60
    assert set(metrics["recipe_choice"]["estimated_seconds"]) == set(CANDIDATES)
    assert json.loads((tmp_path / "run" / "training.json").read_text())["recipe_choice"]["recipe"] == "catsdogs-features"
    assert "catsdogs-features" in (tmp_path / "run" / "recipe.toml").read_text()


def test_the_seed_mnist_networks_flops_are_the_hand_count():
    """mnist_convnet at 28x28x1, a multiply-add as two FLOPs (bias, ReLU and pooling are not counted)."""
    from smallvision.flops import forward_flops, training_flops
    from smallvision.models import create_model

    model = create_model("mnist_convnet", (1, 28, 28), 10)
    conv1 = 2 * 9 * 1 * 32 * 26 * 26  # 3x3, 1 -> 32 channels, 26x26 out
    conv2 = 2 * 9 * 32 * 64 * 11 * 11  # after 2x2 pooling: 13x13 in, 11x11 out
    conv3 = 2 * 9 * 64 * 64 * 3 * 3  # 5x5 in, 3x3 out
    dense = 2 * 576 * 64 + 2 * 64 * 10
    forward = conv1 + conv2 + conv3 + dense
    assert forward_flops(model, (1, 28, 28)) == forward  # 5,588,480
    # backward: the weights' gradient costs a forward pass for every layer, the input's for every layer
    # but the first (the image needs none)
    assert training_flops(model, (1, 28, 28)) == forward + forward + (forward - conv1)  # 16,376,064


def test_mnist_slim_is_the_seed_network_with_half_its_first_filters_and_under_a_third_of_its_flops():
    """fast-mnist's network: the seed's layers with 16 and 32 filters in the first two convolutions."""
    from smallvision.flops import forward_flops, training_flops
    from smallvision.models import create_model

    slim, seed = create_model("mnist_slim", (1, 28, 28), 10), create_model("mnist_convnet", (1, 28, 28), 10)
    assert [type(layer).__name__ for layer in slim.keras_layers] == [type(layer).__name__ for layer in seed.keras_layers]
    conv1 = 2 * 9 * 1 * 16 * 26 * 26
    forward = conv1 + 2 * 9 * 16 * 32 * 11 * 11 + 2 * 9 * 32 * 64 * 3 * 3 + 2 * 576 * 64 + 2 * 64 * 10
    assert forward_flops(slim, (1, 28, 28)) == forward
    assert training_flops(slim, (1, 28, 28)) == 3 * forward - conv1  # 4,955,136
    assert training_flops(slim, (1, 28, 28)) < training_flops(seed, (1, 28, 28)) / 3


def test_the_matmul_peak_is_a_positive_rate():
    from smallvision.flops import matmul_peak

    assert matmul_peak(size=256, seconds=0.05) > 0.1  # GFLOP/s: any CPU of this century


def test_a_depthwise_convolutions_gradients_cost_what_its_forward_pass_did():
    """PyTorch's counter leaves `groups` out of the backward pass; ours does not."""
    import torch

    from smallvision.flops import training_flops

    depthwise = torch.nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False)
    forward = 2 * 9 * 64 * 32 * 32  # each output value: 9 multiply-adds over its own channel
    # the image needs no gradient: the weights' gradient alone, one forward pass's worth
    assert training_flops(depthwise, (64, 32, 32)) == forward + forward
    stacked = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 1, bias=False), depthwise)
    pointwise = 2 * 64 * 64 * 32 * 32
    # the depthwise layer's input gradient now counts too (the pointwise layer before it trains)
    assert training_flops(stacked, (64, 32, 32)) == 3 * forward + 2 * pointwise


def test_a_damaged_rates_cache_is_measured_again_and_rewritten(tmp_path, monkeypatch):
    import torch

    from smallvision import budget
    from smallvision.budget import RATES_FORMAT, rates_here

    (tmp_path / "throughput.json").write_text("[1, 2]")  # not what we write: no crash, measured again
    recipe = load_recipe("catsdogs-finetune").replace(image_size=64)
    rates = rates_here(recipe, torch.device("cpu"), "fp32", tmp_path)
    assert rates.forward > 0
    kept = json.loads((tmp_path / "throughput.json").read_text())
    assert kept["format"] == RATES_FORMAT and list(kept.values()).count({"forward": rates.forward,
                                                                        "frozen_step": rates.frozen_step,
                                                                        "tuning_step": rates.tuning_step}) == 1
    # the second time, from the cache (its check made to agree: another worker's load must not flake this)
    monkeypatch.setattr(budget, "forward_rate_now", lambda *args: rates.forward)
    assert rates_here(recipe, torch.device("cpu"), "fp32", tmp_path) == rates


def test_a_stale_cached_rate_is_measured_again_and_a_good_one_kept(tmp_path, monkeypatch):
    """A rate cached while the machine was busy (10x too slow) is measured again at the next run's check;
    one within 2x of the check is used as it is."""
    import torch

    from smallvision import budget
    from smallvision.budget import RATES_FORMAT, Rates, machine_key, rates_here

    recipe = load_recipe("catsdogs-finetune").replace(image_size=64)
    key = machine_key(recipe, torch.device("cpu"), "fp32", torch.get_num_threads())
    stale = {"forward": 10.0, "frozen_step": 5.0, "tuning_step": 2.0}
    (tmp_path / "throughput.json").write_text(json.dumps({"format": RATES_FORMAT, key: stale}))
    measured = Rates(forward=100.0, frozen_step=50.0, tuning_step=20.0)
    monkeypatch.setattr(budget, "measure_rates", lambda *args: measured)
    monkeypatch.setattr(budget, "forward_rate_now", lambda *args: 100.0)
    assert rates_here(recipe, torch.device("cpu"), "fp32", tmp_path) == measured
    assert json.loads((tmp_path / "throughput.json").read_text())[key] == {
        "forward": 100.0, "frozen_step": 50.0, "tuning_step": 20.0}  # the stale entry rewritten
    monkeypatch.setattr(budget, "forward_rate_now", lambda *args: 60.0)  # a busier moment, within 2x
    monkeypatch.setattr(budget, "measure_rates", lambda *args: pytest.fail("a good cached rate was measured again"))
    assert rates_here(recipe, torch.device("cpu"), "fp32", tmp_path) == measured


def test_the_check_on_a_cached_rate_is_a_real_forward_rate():
    import torch

    from smallvision.budget import forward_rate_now

    recipe = load_recipe("catsdogs-finetune").replace(image_size=64)
    assert forward_rate_now(recipe, torch.device("cpu"), "fp32") > 1  # images/s of a small forward pass


def test_a_from_scratch_recipe_is_estimated_by_its_whole_training_steps():
    """catsdogs on the shared splits: 120 epochs of 2,000 images through a training step, a validation
    every 10 epochs and the test, each flipped too (test-time flips)."""
    recipe = load_recipe("catsdogs")
    rates = Rates(forward=100.0, frozen_step=10.0, tuning_step=10.0)
    assert estimate_seconds(recipe, SHARED, rates) == pytest.approx(120 * 2000 / 10 + 12 * 1000 * 2 / 100
                                                                    + 1000 * 2 / 100)


def test_a_from_scratch_networks_rates_are_its_whole_step_and_its_forward_pass():
    import torch

    recipe = load_recipe("catsdogs").replace(image_size=32)
    rates = measure_rates(recipe, torch.device("cpu"), "fp32", batch=8, repeats=2)
    assert rates.frozen_step == rates.tuning_step > 0  # one step: the whole network trains
    assert rates.forward > rates.tuning_step
