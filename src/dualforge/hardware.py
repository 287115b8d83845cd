"""What the machine can do: the device to train on, whether bf16 runs natively, thread shares.

Everything here is a query of the hardware (through torch's own capability functions where they
exist) or a pure rule over the answers, so the rules are tested without the hardware:

* :func:`resolve_device` turns ``auto | cpu | cuda | cuda:N`` into a ``torch.device``;
* :func:`native_bf16` says whether a device runs bf16 matrix multiplies in hardware (CUDA:
  ``torch.cuda.is_bf16_supported``; CPU: AVX512-BF16 or AMX, and oneDNN not capped below them
  by ``ONEDNN_MAX_CPU_ISA``);
* :func:`resolve_precision` picks ``fp32 | bf16 | fp16`` from a request (``auto`` included);
* :func:`thread_share` splits the cores between the processes of one machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

from dualforge.errors import UserError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Resolved = Literal["fp32", "bf16", "fp16"]

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) at or above which bf16 matmuls run in hardware.
_BF16_ISAS = frozenset(
    {
        "ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
        "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
        "AVX10_2_512", "AVX10_2_512_AMX_2",
    }
)  # fmt: skip


class DeviceError(UserError):
    """A device or precision setting this machine cannot honour."""


def resolve_device(spec: str, key: str = "run.device") -> torch.device:
    """The device named by ``spec``: ``auto`` (CUDA when available, else CPU), ``cpu``,
    ``cuda`` (the current CUDA device) or ``cuda:N``.

    Raises:
        DeviceError: Naming ``key``, for an unknown name or a CUDA device this machine lacks.
    """
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DeviceError(f"{key}={spec!r}: must be auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"{key}={spec!r}: must be auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"{key}={spec!r}: no CUDA device is available on this machine")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(f"{key}={spec!r}: this machine has {count} CUDA device(s)")
    return device


def cpu_bf16_hardware() -> bool:
    """Whether this CPU has AVX512-BF16 or AMX tiles (torch's own probes of the CPU)."""
    probes = [getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              getattr(torch.cpu, "_is_amx_tile_supported", None)]  # fmt: skip
    if all(p is None for p in probes):  # torch too old to ask: read the kernel's flags
        return _cpuinfo_has({"avx512_bf16", "amx_bf16"})
    return any(bool(p()) for p in probes if p is not None)


def _cpuinfo_has(flags: set[str]) -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return False
    return any(flag in text.split() for flag in flags)


def onednn_allows_bf16(env: dict[str, str] | None = None) -> bool:
    """False when ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below its bf16 instruction sets."""
    cap = (env if env is not None else dict(os.environ)).get("ONEDNN_MAX_CPU_ISA", "ALL")
    return cap.strip().upper() in _BF16_ISAS


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matrix multiplies in hardware."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_bf16_hardware() and onednn_allows_bf16()
    return False


@dataclass(frozen=True)
class PrecisionChoice:
    """A resolved precision and why it was chosen.

    Attributes:
        precision: ``fp32``, ``bf16`` or ``fp16``.
        reason: One sentence for the log (e.g. ``"auto: this CPU has no native bf16"``).
        warning: Set when the user asked for something that will run slowly here.
    """

    precision: Resolved
    reason: str
    warning: str | None = None


def resolve_precision(requested: Precision, device_type: str, bf16_native: bool) -> PrecisionChoice:
    """Pick the autocast precision (a pure rule; :func:`native_bf16` supplies ``bf16_native``).

    ``auto``: bf16 where it runs natively, else fp32. ``fp16`` needs CUDA (it trains with a
    GradScaler). An explicit ``bf16`` without native support is honoured with a warning.

    Raises:
        DeviceError: ``fp16`` on a device other than CUDA.
    """
    where = "this GPU" if device_type == "cuda" else "this CPU"
    if requested == "auto":
        if bf16_native:
            return PrecisionChoice("bf16", f"auto: {where} runs bf16 natively")
        return PrecisionChoice("fp32", f"auto: {where} has no native bf16")
    if requested == "fp16" and device_type != "cuda":
        raise DeviceError(
            "gradcache.precision='fp16': fp16 with a GradScaler needs a CUDA device; "
            "use auto, bf16 or fp32 on the CPU"
        )
    warning = None
    if requested == "bf16" and not bf16_native:
        warning = (
            f"gradcache.precision='bf16' on {where} without native bf16 "
            + ("(no AVX512-BF16 or AMX): autocast emulates bf16 and can run 10-40x slower "
               "than fp32" if device_type == "cpu" else "(compute capability below 8.0): "
               "bf16 is emulated and slow")
            + "; gradcache.precision=auto picks fp32 here"
        )  # fmt: skip
    return PrecisionChoice(requested, "as configured", warning)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, else ``os.cpu_count``)."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        return max(len(affinity(0)), 1)
    return max(os.cpu_count() or 1, 1)


def thread_share(local_world: int, cores: int | None = None) -> int:
    """Torch threads for each of ``local_world`` processes sharing one machine's cores."""
    total = usable_cores() if cores is None else cores
    return max(total // max(local_world, 1), 1)
