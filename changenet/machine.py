"""What machine this is: the CPU (model, vendor, family, cores, clock, the ISA features that decide which
arithmetic runs natively), the GPU, and the peak throughput utilisation figures are measured against.

The CPU is read from /proc/cpuinfo, or from the file named by the environment variable CHANGENET_CPUINFO
(a /proc/cpuinfo-style text), so tests and users can describe another CPU than the one they run on.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from changenet.errors import ChangenetError

CPUINFO_ENV = "CHANGENET_CPUINFO"
PROC_CPUINFO = "/proc/cpuinfo"
# The ISA features that change which arithmetic a CPU runs natively, as /proc/cpuinfo names them.
ISA_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
# Used when the cpuinfo text has no clock (some VMs and non-x86 kernels): a typical server base clock.
FALLBACK_MHZ = 2500.0


@dataclass(frozen=True)
class CpuInfo:
    model: str
    vendor: str  # GenuineIntel, AuthenticAMD, ... ("" when the text does not say)
    family: Optional[int]
    logical_cores: int
    max_mhz: Optional[float]  # highest "cpu MHz" of any processor: the base clock in most VMs, never turbo
    features: Tuple[str, ...]  # the ISA_FEATURES this CPU has, in ISA_FEATURES order

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def isa(self) -> str:
        """Short human form, e.g. "AVX-512, VNNI, AVX512-BF16, AMX"."""
        parts = ["AVX-512" if self.has("avx512f") else "AVX2" if self.has("avx2") else "no AVX2"]
        if self.has("avx512_vnni"):
            parts.append("VNNI")
        elif self.has("avx_vnni"):
            parts.append("AVX-VNNI")
        if self.has("avx512_bf16"):
            parts.append("AVX512-BF16")
        if any(self.has(f) for f in ("amx_tile", "amx_bf16", "amx_int8")):
            parts.append("AMX")
        return ", ".join(parts)


def parse_cpuinfo(text: str, logical_cores: Optional[int] = None) -> CpuInfo:
    """A CpuInfo from /proc/cpuinfo text. Model, vendor, family and flags come from the first processor (the
    kernel lists the same flags on every core); the clock is the highest of all. `logical_cores` defaults to
    os.cpu_count(), the cores this machine has whatever the text describes."""
    first: Dict[str, str] = {}
    mhz: List[float] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "cpu MHz":
            try:
                mhz.append(float(value))
            except ValueError:
                pass
        first.setdefault(key, value)
    flags = set((first.get("flags") or first.get("Features") or "").split())
    try:
        family: Optional[int] = int(first["cpu family"])
    except (KeyError, ValueError):
        family = None
    return CpuInfo(
        model=" ".join((first.get("model name") or platform.processor() or "unknown CPU").split()),
        vendor=first.get("vendor_id", ""),
        family=family,
        logical_cores=logical_cores or os.cpu_count() or 1,
        max_mhz=max(mhz) if mhz else None,
        features=tuple(f for f in ISA_FEATURES if f in flags),
    )


@functools.lru_cache(maxsize=None)
def cpu_from_file(path: str) -> CpuInfo:
    """The CPU a cpuinfo file describes (cached per path: call cpu_from_file.cache_clear() after rewriting one)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        if path != PROC_CPUINFO:  # a file the user named must exist
            raise ChangenetError(f"{CPUINFO_ENV}={path} cannot be read: {exc.strerror or exc}") from exc
        text = ""  # no /proc (macOS, Windows): an unknown CPU
    return parse_cpuinfo(text)


def this_cpu() -> CpuInfo:
    """The CPU of this machine, or the one described by the file $CHANGENET_CPUINFO names (when set, non-empty)."""
    return cpu_from_file(os.environ.get(CPUINFO_ENV) or PROC_CPUINFO)


def gpu_name() -> Optional[str]:
    """Name of the current CUDA device, None without one."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def describe_machine(cpu: Optional[CpuInfo] = None) -> Dict[str, object]:
    """The machine as benchmark.json records it."""
    if cpu is None:
        cpu = this_cpu()
    return {"cpu_model": cpu.model, "cpu_vendor": cpu.vendor, "cpu_family": cpu.family, "cpu_count": cpu.logical_cores,
            "cpu_max_mhz": cpu.max_mhz, "cpu_isa_features": list(cpu.features), "cpu_isa": cpu.isa,
            "gpu": gpu_name(), "platform": platform.platform()}


# --------------------------------------------------------------------------- native arithmetic and peaks
def bf16_native(cpu: CpuInfo) -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    return cpu.has("avx512_bf16") or cpu.has("amx_bf16")


def int8_native(cpu: CpuInfo) -> bool:
    """Whether the CPU has int8 dot-product instructions (VNNI, AVX-VNNI or AMX)."""
    return cpu.has("avx512_vnni") or cpu.has("avx_vnni") or cpu.has("amx_int8")


def fp32_flops_per_cycle(cpu: CpuInfo) -> int:
    """FP32 FLOPs per cycle and core of the vector FMA units (two FMA pipes, an FMA counting 2 FLOPs)."""
    if cpu.has("avx512f"):
        # AMD Zen 4 (family 25) runs AVX-512 on its 256-bit units, so it peaks like AVX2; Zen 5 (family 26)
        # and Intel's server cores have two full 512-bit FMA units (Intel parts with one such unit are
        # overestimated: cpuinfo does not tell them apart).
        if cpu.vendor == "AuthenticAMD" and (cpu.family or 0) <= 25:
            return 32
        return 64
    if cpu.has("avx2"):
        return 32  # two 256-bit FMA units: 2 x 8 lanes x 2
    return 16  # SSE: 128-bit multiply and add units


def reduced_precision_factor(cpu: CpuInfo, precision: str) -> int:
    """Peak rate of `precision` (fp32, bf16, int8) over FP32 FMA on the same CPU (ops per core and cycle)."""
    if precision == "bf16":  # AMX tiles 1024 bf16 FLOPs per cycle vs 64 FP32; AVX512-BF16 dot products twice FMA
        return 16 if cpu.has("amx_bf16") else 2 if cpu.has("avx512_bf16") else 1
    if precision == "int8":  # AMX 2048 int8 ops; VNNI 4 multiply-adds per 32-bit lane; without it, 16-bit pairs
        return 32 if cpu.has("amx_int8") else 4 if (cpu.has("avx512_vnni") or cpu.has("avx_vnni")) else 2
    return 1


@functools.lru_cache(maxsize=None)
def measured_matmul_tflops(size: int = 2048, repeats: int = 5) -> float:
    """FP32 TFLOP/s of a large matrix product on this CPU (oneDNN/MKL reach close to the machine's peak)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def estimate_cpu_peak_tflops(precision: str = "fp32", cpu: Optional[CpuInfo] = None) -> Tuple[float, str]:
    """Peak TFLOP/s (TOP/s for int8) of the CPU for `precision` (fp32, bf16, int8), and how it was found.

    FP32: cores x highest cpuinfo clock (2500 MHz when none is given) x fp32_flops_per_cycle, or a measured
    2048² FP32 matrix product on this machine when that is higher (turbo clocks, which /proc/cpuinfo does not
    show); times reduced_precision_factor for bf16 and int8. `cpu` defaults to this_cpu()."""
    if cpu is None:
        cpu = this_cpu()
    mhz = cpu.max_mhz or FALLBACK_MHZ
    per_cycle = fp32_flops_per_cycle(cpu)
    estimated = cpu.logical_cores * mhz * 1e6 * per_cycle / 1e12
    measured = measured_matmul_tflops()
    fp32, source = (measured, f"measured FP32 matmul {measured:.3f} TFLOP/s") if measured > estimated else \
        (estimated, f"estimated: {cpu.logical_cores} cores x {mhz:.0f} MHz x {per_cycle} FP32 FLOP/cycle")
    factor = reduced_precision_factor(cpu, precision)
    return fp32 * factor, source + (f" x {factor} for {precision}" if factor > 1 else "")
