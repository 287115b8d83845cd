"""Device and precision rules (pure functions over what the hardware answers)."""

from __future__ import annotations

import pytest
import torch

from dualforge.hardware import (
    DeviceError,
    onednn_allows_bf16,
    resolve_device,
    resolve_precision,
    thread_share,
)


def test_auto_precision_follows_native_bf16() -> None:
    assert resolve_precision("auto", "cpu", bf16_native=True).precision == "bf16"
    slow = resolve_precision("auto", "cpu", bf16_native=False)
    assert (slow.precision, slow.warning) == ("fp32", None)
    assert "no native bf16" in slow.reason
    assert resolve_precision("auto", "cuda", bf16_native=True).precision == "bf16"


def test_explicit_bf16_without_hardware_warns_why() -> None:
    choice = resolve_precision("bf16", "cpu", bf16_native=False)
    assert choice.precision == "bf16"
    assert choice.warning is not None
    assert "AVX512-BF16 or AMX" in choice.warning and "precision=auto picks fp32" in choice.warning
    assert resolve_precision("bf16", "cpu", bf16_native=True).warning is None
    assert resolve_precision("fp32", "cpu", bf16_native=False).warning is None


def test_fp16_needs_cuda() -> None:
    with pytest.raises(DeviceError, match=r"^gradcache\.precision='fp16': fp16 .* needs a CUDA"):
        resolve_precision("fp16", "cpu", bf16_native=True)
    assert resolve_precision("fp16", "cuda", bf16_native=True).precision == "fp16"


def test_onednn_cap_below_bf16_means_no_native_bf16() -> None:
    assert onednn_allows_bf16({})
    assert onednn_allows_bf16({"ONEDNN_MAX_CPU_ISA": "avx512_core_amx"})
    assert not onednn_allows_bf16({"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert not onednn_allows_bf16({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"})


def test_devices_resolve_or_fail_naming_the_key() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(DeviceError, match=r"^run\.device='tpu': must be auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match=r"^--device='cuda:1': no CUDA device"):
            resolve_device("cuda:1", key="--device")


def test_thread_share_splits_the_cores() -> None:
    assert thread_share(1, cores=16) == 16
    assert thread_share(4, cores=16) == 4
    assert thread_share(3, cores=2) == 1
