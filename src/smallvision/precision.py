"""The number format a run computes in: bf16 where the hardware computes it natively, fp32 elsewhere.

bf16 autocast is the fastest choice on a CPU with AVX-512 BF16 or AMX and on a recent GPU, and a
trap everywhere else: on an AVX2-only CPU (most laptops) PyTorch emulates it and seed-mnist trains
at 588 images/s instead of fp32's 4,732. So a recipe's `precision = "auto"` asks the hardware, an
explicit "bf16" is obeyed with a warning where it is emulated, and inference always follows the
machine it runs on, whatever the run was trained in.

The environment variables that make a CPU play a lesser one are honoured, so a benchmark or a test
can play a laptop: ONEDNN_MAX_CPU_ISA (oneDNN's convolutions and matrix products) and
ATEN_CPU_CAPABILITY (PyTorch's own kernels).
"""

import os
from dataclasses import dataclass

import torch

from smallvision.recipe import PRECISIONS
# oneDNN's instruction sets in order (its ONEDNN_MAX_CPU_ISA names, aliases beside them); from
# AVX512_CORE_BF16 on, oneDNN has native bf16 kernels.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512",
               "AVX10_2_512_AMX_2")
ONEDNN_ALIASES = {"AVX512_CORE_FP16": "AVX10_1_512", "AVX512_CORE_AMX": "AVX10_1_512_AMX",
                  "AVX512_CORE_AMX_FP16": "AVX10_1_512_AMX_FP16"}
ONEDNN_FIRST_BF16 = ONEDNN_ISAS.index("AVX512_CORE_BF16")
# What emulation costs, measured on seed-mnist (200 steps, the 2-core development CPU playing AVX2):
# the figure the warning quotes.
EMULATED_BF16_SLOWDOWN = "about 8x slower than --precision fp32 (seed-mnist: 588 against 4,732 images/s)"


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run computes in ("bf16" or "fp32"), why, and whether bf16 was asked for where it is emulated."""

    precision: str
    reason: str
    emulated: bool = False

    def warning(self) -> str | None:
        if not self.emulated:
            return None
        return (f"bf16 was asked for, but {self.reason}: PyTorch emulates it here, so training runs "
                f"{EMULATED_BF16_SLOWDOWN}; fp32 (or auto) gives the same accuracy")


def cpu_bf16_instructions() -> list[str]:
    """This CPU's own bf16 arithmetic ("AVX-512 BF16", "AMX"), whatever the environment says. An ARM
    CPU's bf16 is not counted: nobody has measured that it beats fp32 there."""
    capabilities = torch.cpu.get_capabilities()
    return [name for key, name in (("avx512_bf16", "AVX-512 BF16"), ("amx_bf16", "AMX")) if capabilities.get(key)]


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether `device` computes bf16 natively, the reason in words)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"this GPU ({name}) computes bf16 natively"
        return False, f"this GPU ({name}) has no native bf16"
    if device.type != "cpu":
        return False, f"bf16 on {device.type} is not known to be native"
    instructions = cpu_bf16_instructions()
    if not instructions:
        return False, "this CPU has no bf16 instructions (AVX-512 BF16 or AMX)"
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    limit = ONEDNN_ALIASES.get(limit, limit)
    if limit in ONEDNN_ISAS and ONEDNN_ISAS.index(limit) < ONEDNN_FIRST_BF16:
        return False, f"ONEDNN_MAX_CPU_ISA={limit} keeps oneDNN from this CPU's bf16 instructions"
    capability = torch.backends.cpu.get_cpu_capability()
    if not capability.upper().startswith("AVX512"):
        return False, f"PyTorch's kernels run at {capability} here (ATEN_CPU_CAPABILITY), without bf16"
    return True, f"this CPU computes bf16 natively ({' and '.join(instructions)})"


def training_precision(requested: str, device: torch.device) -> PrecisionChoice:
    """What training computes in: "auto" asks the hardware; "bf16" and "fp32" are obeyed."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "fp32":
        return PrecisionChoice("fp32", "fp32 as the recipe asks")
    native, why = native_bf16(device)
    if requested == "bf16":
        return PrecisionChoice("bf16", "bf16 as the recipe asks" if native else why, emulated=not native)
    return PrecisionChoice("bf16" if native else "fp32", f"auto: {why}")


def inference_precision(trained: str, device: torch.device) -> str:
    """What scoring computes in: a bf16 run is scored in fp32 where bf16 would be emulated (the same
    answers within bf16's rounding, and faster); an fp32 run stays fp32."""
    if trained == "bf16" and native_bf16(device)[0]:
        return "bf16"
    return "fp32"
