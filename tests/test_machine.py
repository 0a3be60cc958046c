"""changenet.machine on faked CPUs (CHANGENET_CPUINFO): the ISA it reads, the FP32 rate per cycle, the
bf16/int8 factors, the peak estimate against the measured matrix product, the OpenVINO bf16 check, and
the CPU in benchmark.json and the table caption.

FAKE_CPUS and write_cpuinfo are also used by tests/openvino_checks.py.
"""

from __future__ import annotations

import io
import os
from types import SimpleNamespace

import pytest
from rich.console import Console

import changenet.machine as machine
from changenet.errors import ChangenetError

INTEL_AMX_FLAGS = ("fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl "
                   "avx_vnni avx512_bf16 avx512vbmi avx512_vnni avx512_bitalg avx512_vpopcntdq amx_bf16 avx512_fp16 "
                   "amx_tile amx_int8")
ZEN4_FLAGS = ("fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512ifma avx512cd avx512bw "
              "avx512vl avx512_bf16 avx512vbmi avx512_vbmi2 gfni vaes avx512_vnni avx512_bitalg avx512_vpopcntdq")
AVX2_FLAGS = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi1 bmi2"


def cpuinfo_text(vendor: str, family: int, model: str, flags: str, mhz: tuple) -> str:
    """/proc/cpuinfo as Linux writes it: one block per logical processor, tab-padded keys."""
    blocks = []
    for index, clock in enumerate(mhz):
        blocks.append(f"processor\t: {index}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: 17\n"
                      f"model name\t: {model}\nstepping\t: 1\ncpu MHz\t\t: {clock:.3f}\nflags\t\t: {flags}\n"
                      f"power management:\n")
    return "\n".join(blocks)


FAKE_CPUS = {
    "intel_amx": cpuinfo_text("GenuineIntel", 6, "Intel(R) Xeon(R) Platinum 8488C", INTEL_AMX_FLAGS, (2400.0, 3800.0)),
    # Zen 4: AVX-512, VNNI and AVX512-BF16 on 256-bit units, no AMX, no AVX-VNNI; the model name padded as AMD pads it
    "amd_zen4": cpuinfo_text("AuthenticAMD", 25, "AMD EPYC 9R14 96-Core Processor   ", ZEN4_FLAGS, (3700.0, 2600.0)),
    "avx2_only": cpuinfo_text("GenuineIntel", 6, "Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz", AVX2_FLAGS, (2300.0, 2300.0)),
}
CORES = 2  # the figures below are for os.cpu_count() == 2, faked in the fixture
# name -> (model, ISA string, FP32 FLOPs per cycle, bf16 factor, int8 factor, estimated FP32 TFLOP/s)
EXPECTED = {
    "intel_amx": ("Intel(R) Xeon(R) Platinum 8488C", "AVX-512, VNNI, AVX512-BF16, AMX", 64, 16, 32, 2 * 3.8e9 * 64 / 1e12),
    "amd_zen4": ("AMD EPYC 9R14 96-Core Processor", "AVX-512, VNNI, AVX512-BF16", 32, 2, 4, 2 * 3.7e9 * 32 / 1e12),
    "avx2_only": ("Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz", "AVX2", 32, 1, 2, 2 * 2.3e9 * 32 / 1e12),
}


def write_cpuinfo(directory, name: str):
    path = directory / f"{name}.cpuinfo"
    path.write_text(FAKE_CPUS[name])
    return path


@pytest.fixture
def fake_cpu(tmp_path, monkeypatch):
    """Function name -> CpuInfo: makes this_cpu() the named fake CPU with 2 logical cores."""
    monkeypatch.setattr(os, "cpu_count", lambda: CORES)
    machine.cpu_from_file.cache_clear()

    def use(name: str) -> machine.CpuInfo:
        monkeypatch.setenv(machine.CPUINFO_ENV, str(write_cpuinfo(tmp_path, name)))
        return machine.this_cpu()

    yield use
    machine.cpu_from_file.cache_clear()


@pytest.mark.parametrize("name", sorted(FAKE_CPUS))
def test_fake_cpu_isa_and_peak_arithmetic(fake_cpu, name):
    model, isa, per_cycle, bf16, int8, _ = EXPECTED[name]
    cpu = fake_cpu(name)
    assert cpu.model == model and cpu.isa == isa and cpu.logical_cores == CORES
    assert machine.fp32_flops_per_cycle(cpu) == per_cycle
    assert machine.reduced_precision_factor(cpu, "fp32") == 1
    assert machine.reduced_precision_factor(cpu, "bf16") == bf16
    assert machine.reduced_precision_factor(cpu, "int8") == int8
    assert machine.bf16_native(cpu) == (name != "avx2_only")
    assert machine.int8_native(cpu) == (name != "avx2_only")


def test_fields_read_from_cpuinfo(fake_cpu):
    intel = fake_cpu("intel_amx")
    assert (intel.vendor, intel.family, intel.max_mhz) == ("GenuineIntel", 6, 3800.0)  # the highest clock of all
    assert intel.features == machine.ISA_FEATURES  # every feature that matters, in their order
    amd = fake_cpu("amd_zen4")
    assert (amd.vendor, amd.family, amd.max_mhz) == ("AuthenticAMD", 25, 3700.0)
    assert amd.features == ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")
    assert fake_cpu("avx2_only").features == ("avx2",)


def test_per_cycle_rate_follows_vendor_family_and_isa():
    def cpu(vendor, family, *features):
        return machine.CpuInfo("x", vendor, family, 2, 3000.0, tuple(features))

    assert machine.fp32_flops_per_cycle(cpu("AuthenticAMD", 25, "avx2", "avx512f")) == 32  # Zen 4: 256-bit units
    assert machine.fp32_flops_per_cycle(cpu("AuthenticAMD", 26, "avx2", "avx512f")) == 64  # Zen 5: 512-bit units
    assert machine.fp32_flops_per_cycle(cpu("AuthenticAMD", 25, "avx2")) == 32  # Zen 3
    assert machine.fp32_flops_per_cycle(cpu("GenuineIntel", 6, "avx2", "avx512f")) == 64
    assert machine.fp32_flops_per_cycle(cpu("GenuineIntel", 6)) == 16  # no AVX2
    assert cpu("GenuineIntel", 6).isa == "no AVX2"
    assert cpu("GenuineIntel", 6, "avx2", "avx_vnni").isa == "AVX2, AVX-VNNI"


@pytest.mark.parametrize("name", sorted(FAKE_CPUS))
def test_peak_estimate_is_fp32_times_the_factor_unless_the_matmul_measures_more(fake_cpu, monkeypatch, name):
    _, _, per_cycle, bf16, int8, fp32 = EXPECTED[name]
    fake_cpu(name)
    monkeypatch.setattr(machine, "measured_matmul_tflops", lambda: 1e-6)
    for precision, factor in (("fp32", 1), ("bf16", bf16), ("int8", int8)):
        peak, source = machine.estimate_cpu_peak_tflops(precision)
        assert peak == pytest.approx(fp32 * factor), precision
        assert f"{CORES} cores" in source and f"x {per_cycle} FP32 FLOP/cycle" in source
        assert (f"x {factor} for {precision}" in source) == (factor > 1)
    monkeypatch.setattr(machine, "measured_matmul_tflops", lambda: 50.0)
    peak, source = machine.estimate_cpu_peak_tflops("bf16")
    assert peak == pytest.approx(50.0 * bf16) and source.startswith("measured FP32 matmul 50.000")


def test_benchmark_takes_its_cpu_peak_from_machine(fake_cpu, monkeypatch):
    from changenet.actions.benchmark import estimate_peak_tflops

    fake_cpu("amd_zen4")
    monkeypatch.setattr(machine, "measured_matmul_tflops", lambda: 1e-6)
    assert estimate_peak_tflops("openvino-bf16", "cpu")[0] == pytest.approx(2 * 3.7e9 * 32 * 2 / 1e12)
    assert estimate_peak_tflops("onnxruntime-int8", "cpu")[0] == pytest.approx(2 * 3.7e9 * 32 * 4 / 1e12)
    assert estimate_peak_tflops("onnxruntime", "cpu")[0] == pytest.approx(2 * 3.7e9 * 32 / 1e12)
    # openvino with precision auto is measured against the arithmetic OpenVINO chose on this CPU.
    chose_bf16, chose_f32 = SimpleNamespace(precision="bf16"), SimpleNamespace(precision="f32")
    assert estimate_peak_tflops("openvino", "cpu", chose_bf16)[0] == pytest.approx(2 * 3.7e9 * 32 * 2 / 1e12)
    assert estimate_peak_tflops("openvino", "cpu", chose_f32)[0] == pytest.approx(2 * 3.7e9 * 32 / 1e12)


def test_openvino_bf16_check_follows_the_fake_cpu(fake_cpu):
    # Imports no OpenVINO (its predictor refuses bf16 in tests/openvino_checks.py, in a process of its own).
    from changenet.machine import bf16_native, this_cpu

    fake_cpu("intel_amx")
    assert bf16_native(this_cpu())
    fake_cpu("amd_zen4")
    assert bf16_native(this_cpu())
    fake_cpu("avx2_only")
    assert not bf16_native(this_cpu())


def test_cpuinfo_env_naming_a_missing_file_is_an_error(tmp_path, monkeypatch):
    machine.cpu_from_file.cache_clear()
    monkeypatch.setenv(machine.CPUINFO_ENV, str(tmp_path / "nowhere.cpuinfo"))
    with pytest.raises(ChangenetError, match="CHANGENET_CPUINFO=.*nowhere.cpuinfo cannot be read"):
        machine.this_cpu()
    monkeypatch.setenv(machine.CPUINFO_ENV, "")  # empty: this machine's /proc/cpuinfo
    assert machine.this_cpu() == machine.cpu_from_file(machine.PROC_CPUINFO)
    machine.cpu_from_file.cache_clear()


def test_text_without_cpu_fields_gives_an_unknown_cpu():
    cpu = machine.parse_cpuinfo("processor\t: 0\nBogoMIPS\t: 50.00\n", logical_cores=4)
    assert (cpu.vendor, cpu.family, cpu.max_mhz, cpu.features, cpu.logical_cores) == ("", None, None, (), 4)
    assert cpu.model  # platform.processor() or "unknown CPU"


def report_without_backends(cfg):
    """A benchmark report that runs no backend (each one refused), so it costs the FLOP count only."""
    from changenet.actions.benchmark import run_benchmark

    def refuse(backend, cfg):
        raise ChangenetError(f"{backend} not run in this test")

    return run_benchmark(cfg, open_fn=refuse)


@pytest.mark.parametrize("gpu", [None, "NVIDIA H200"])
def test_benchmark_report_and_caption_name_the_cpu(fake_cpu, monkeypatch, tmp_path, gpu):
    import changenet.actions.benchmark as bench
    from changenet.config import load_spec

    fake_cpu("amd_zen4")
    monkeypatch.setattr(machine, "gpu_name", lambda: gpu)
    cfg = load_spec(None, ["model.backbone.type=fan_tiny_8_p4_hybrid", "dataset.segment.img_size=32",
                           "model.decode_head.decoder_params.embed_dim=16", f"results_dir={tmp_path}",
                           "benchmark.backends=[torch,onnxruntime]", "benchmark.batch_sizes=[1]"])
    report = report_without_backends(cfg)
    entry = report["machine"]
    assert entry["cpu_model"] == "AMD EPYC 9R14 96-Core Processor" and entry["cpu_vendor"] == "AuthenticAMD"
    assert entry["cpu_family"] == 25 and entry["cpu_count"] == CORES and entry["gpu"] == gpu
    assert entry["cpu_isa"] == "AVX-512, VNNI, AVX512-BF16"
    assert entry["cpu_isa_features"] == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert {r["status"] for r in report["results"]} == {"unavailable"}

    out = io.StringIO()
    monkeypatch.setattr(bench, "console", Console(file=out, width=100))
    bench.print_report(report)
    lines = out.getvalue().splitlines()
    assert lines and all(len(line) <= 100 for line in lines) and not any("…" in line for line in lines)
    text = " ".join(" ".join(line.split()) for line in lines)  # the caption may wrap at the table's width
    assert "CPU: AMD EPYC 9R14 96-Core Processor (AVX-512, VNNI, AVX512-BF16)" in text
    assert ("GPU: NVIDIA H200" in text) == (gpu is not None)
    assert "device: -" in text and "p90 latency and more in benchmark.json" in text


def test_caption_packs_its_parts_into_lines_of_the_table_width():
    from changenet.actions.benchmark import caption_lines

    cpu = "CPU: Intel(R) Xeon(R) Platinum 8488C (AVX-512, VNNI, AVX512-BF16, AMX)"
    entry = {"cpu_model": "Intel(R) Xeon(R) Platinum 8488C", "cpu_isa": "AVX-512, VNNI, AVX512-BF16, AMX",
             "gpu": "NVIDIA H200"}
    assert caption_lines(entry, ["cpu", "cuda:0"], width=100) == [
        f"{cpu}; GPU: NVIDIA H200", "device: cpu, cuda:0; p90 latency and more in benchmark.json"]
    assert caption_lines(entry, ["cpu", "cuda:0"], width=84) == [
        cpu, "GPU: NVIDIA H200; device: cpu, cuda:0; p90 latency and more in benchmark.json"]
    assert caption_lines({**entry, "gpu": None}, ["cpu"], width=100) == [
        f"{cpu}; device: cpu", "p90 latency and more in benchmark.json"]
    assert caption_lines({}, [], width=100) == ["CPU: unknown (-); device: -; p90 latency and more in benchmark.json"]
