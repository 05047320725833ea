"""bf16 only where the hardware computes it: the rule, what a run records, the warning, and inference."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import smallvision as sv
from smallvision import precision
from smallvision.precision import inference_precision, native_bf16, training_precision

CPU = torch.device("cpu")


@pytest.fixture
def native_cpu(monkeypatch):
    """A CPU that reports native bf16, whatever this machine is."""
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: ["AMX"])
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)


@pytest.fixture
def avx2_cpu(native_cpu, monkeypatch):
    """The same CPU told to play an AVX2-only one, as a benchmark would."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")


def test_auto_picks_bf16_where_native_bf16_is_reported(native_cpu):
    choice = training_precision("auto", CPU)
    assert choice.precision == "bf16" and not choice.emulated and choice.warning() is None
    assert "natively (AMX)" in choice.reason


def test_auto_picks_fp32_under_an_avx2_limit(avx2_cpu):
    choice = training_precision("auto", CPU)
    assert choice.precision == "fp32" and "ONEDNN_MAX_CPU_ISA=AVX2" in choice.reason
    assert choice.warning() is None  # auto never emulates, so it has nothing to warn about


@pytest.mark.parametrize("limit, native", [("AVX512_CORE", False), ("avx2_vnni_2", False),
                                           ("AVX512_CORE_BF16", True), ("AVX512_CORE_AMX", True), ("ALL", True)])
def test_every_onednn_limit_is_read_in_order(native_cpu, monkeypatch, limit, native):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    assert native_bf16(CPU)[0] is native


def test_auto_picks_fp32_without_bf16_instructions_or_below_avx512_kernels(native_cpu, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert training_precision("auto", CPU).precision == "fp32"
    assert "ATEN_CPU_CAPABILITY" in training_precision("auto", CPU).reason
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: [])
    assert "no bf16 instructions" in training_precision("auto", CPU).reason


def test_explicit_choices_are_obeyed(avx2_cpu):
    assert training_precision("fp32", CPU).precision == "fp32"
    choice = training_precision("bf16", CPU)
    assert choice.precision == "bf16" and choice.emulated
    assert "emulates" in choice.warning() and "--precision fp32" in choice.warning()


def test_inference_follows_the_machine(native_cpu, monkeypatch):
    assert inference_precision("bf16", CPU) == "bf16" and inference_precision("fp32", CPU) == "fp32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert inference_precision("bf16", CPU) == "fp32"


def test_a_recipes_auto_is_recorded_as_what_it_resolved_to(tiny_source, tmp_path, native_cpu, monkeypatch, capsys):
    native = sv.train(tiny_source, "seed-mnist", out=tmp_path / "native", epochs=1, device="cpu")
    first_line = capsys.readouterr().out.splitlines()[0]
    assert "in bf16 (auto: this CPU computes bf16 natively (AMX))" in first_line
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    laptop = sv.train(tiny_source, "seed-mnist", out=tmp_path / "laptop", epochs=1, device="cpu", progress=False)
    for run, expected in ((native, "bf16"), (laptop, "fp32")):
        meta = json.loads((run.path / "model.json").read_text())
        metrics = json.loads((run.path / "metrics.json").read_text())
        assert meta["precision"] == metrics["precision"] == expected
        assert meta["precision_reason"] == metrics["precision_reason"] and metrics["precision_reason"].startswith("auto: ")
        assert sv.load_recipe(str(run.path / "recipe.toml")).run.precision == "auto"  # what was asked stays portable


def test_explicit_bf16_on_an_emulating_cpu_trains_as_asked_with_one_warning(tiny_source, tmp_path, avx2_cpu, capsys):
    run = sv.train(tiny_source, "seed-mnist", out=tmp_path / "run", epochs=1, device="cpu", progress=False,
                   precision="bf16")
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: bf16")]
    assert len(warnings) == 1 and "emulates" in warnings[0] and "--precision fp32" in warnings[0]
    assert json.loads((run.path / "model.json").read_text())["precision"] == "bf16"
    assert run.precision == "fp32"  # and scoring it here follows the machine


def test_a_bf16_run_is_scored_in_fp32_under_a_real_avx2_limit(tiny_source, tmp_path):
    """No mocks: a child process that really plays an AVX2 CPU loads a bf16 run and scores it in fp32,
    with the answers of the run's own bf16 scoring within bf16 rounding."""
    run = sv.train(tiny_source, "seed-mnist", out=tmp_path / "run", epochs=1, device="cpu", progress=False,
                   precision="bf16")
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    save_file({"images": images}, str(tmp_path / "images.safetensors"))
    child = ("import sys, torch, smallvision as sv\n"
             "from safetensors.torch import load_file, save_file\n"
             "from smallvision.precision import training_precision\n"
             "run = sv.load_run(sys.argv[1], device='cpu')\n"
             "print(run.precision, training_precision('auto', torch.device('cpu')).precision)\n"
             "answers = run.probabilities(load_file(sys.argv[2])['images'])\n"
             "save_file({'answers': answers}, sys.argv[3])\n")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    done = subprocess.run([sys.executable, "-c", child, str(run.path), str(tmp_path / "images.safetensors"),
                           str(tmp_path / "answers.safetensors")], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["fp32", "fp32"]
    fp32_answers = load_file(str(tmp_path / "answers.safetensors"))["answers"]
    exact = sv.load_run(run.path, device="cpu")
    exact.precision = "fp32"
    torch.testing.assert_close(fp32_answers, exact.probabilities(images), rtol=0, atol=1e-5)
    if run.precision == "bf16":  # this machine computes bf16 natively: compare with the run's own answers
        torch.testing.assert_close(fp32_answers, run.probabilities(images), rtol=0, atol=0.02)
