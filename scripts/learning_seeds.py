"""The margins of the tests that assert an outcome of training or quantization, under several seeds.

    python scripts/learning_seeds.py [--seeds 1 2 3 4 5] [--kernels native|no-amx|avx2] [--threads 1] [--out table.md]

Runs the tests marked `learning` (and the OpenVINO checks, which run in a process of their own) once per
seed with CHANGENET_TEST_SEED set, reads the figures each test recorded (conftest's record_figure) from
pytest's JUnit XML, and prints one table row per figure: its value under every seed, the bar, and the
smallest margin to the bar.

`--threads` is the intra-op thread count of each test process (default 1: `make test` runs one pytest-xdist
worker per core, each with one thread; rounding, hence the figures, can depend on it).
`--kernels` changes which CPU kernels compute the same arithmetic, so a run on one CPU also shows how the
tests fare under another CPU's rounding: `no-amx` caps oneDNN at AVX512_CORE_BF16 and MKL at AVX2 (the
kernels a CPU without AMX, or a non-Intel one, gets), `avx2` caps both at AVX2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {
    "native": {},
    "no-amx": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
TARGETS = [["-m", "learning", "tests"], ["-m", "learning", "tests/openvino_checks.py"]]

Figure = Tuple[str, str]  # (test, figure name)


def run_seed(seed: int, env_changes: Dict[str, str], work: Path) -> Tuple[Dict[Figure, dict], List[str]]:
    """Figures recorded by the learning tests under one seed, and the tests that failed."""
    figures: Dict[Figure, dict] = {}
    failed: List[str] = []
    env = {**os.environ, "CHANGENET_TEST_SEED": str(seed), **env_changes}
    for number, target in enumerate(TARGETS):
        report = work / f"seed{seed}_{number}.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1", f"--junitxml={report}",
                        "--basetemp", str(work / f"tmp{seed}_{number}"), *target],
                       cwd=ROOT, env=env, check=False)
        if not report.is_file():
            continue
        for case in ElementTree.parse(report).getroot().iter("testcase"):
            test = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(test)
            for prop in case.iter("property"):
                name = prop.get("name", "")
                if name.startswith("figure "):
                    figures[(test, name[len("figure "):])] = json.loads(prop.get("value", "{}"))
    return figures, failed


def margin(record: dict) -> float:
    """How far the value is on the passing side of its bar (negative: the test fails)."""
    value, bar = record["value"], record["bar"]
    return value - bar if record["relation"] == ">" else bar - value


def table(seeds: List[int], results: Dict[int, Dict[Figure, dict]]) -> str:
    rows: Dict[Figure, Dict[int, dict]] = defaultdict(dict)
    for seed, figures in results.items():
        for key, record in figures.items():
            rows[key][seed] = record
    header = "| test | figure | " + " | ".join(f"seed {s}" for s in seeds) + " | bar | smallest margin |"
    lines = [header, "|" + "---|" * (len(seeds) + 4)]
    for (test, name), by_seed in sorted(rows.items()):
        any_record = next(iter(by_seed.values()))
        cells = [f"{by_seed[s]['value']:.3f}" if s in by_seed else "-" for s in seeds]
        smallest = min(margin(r) for r in by_seed.values())
        lines.append(f"| {test} | {name} | " + " | ".join(cells) +
                     f" | {any_record['relation']} {any_record['bar']:g} | {smallest:+.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--kernels", choices=sorted(KERNELS), default="native")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each test process")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = parser.parse_args()
    results, failures = {}, {}
    with tempfile.TemporaryDirectory(prefix="changenet-seeds-") as work:
        for seed in args.seeds:
            env = {**KERNELS[args.kernels], "OMP_NUM_THREADS": str(args.threads)}
            results[seed], failures[seed] = run_seed(seed, env, Path(work))
    text = table(args.seeds, results)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    text = f"CPU: {cpu}; kernels: {args.kernels} {KERNELS[args.kernels] or ''}; {args.threads} thread(s)\n\n{text}"
    failed = {seed: tests for seed, tests in failures.items() if tests}
    if failed:
        text += "\n\nfailed: " + "; ".join(f"seed {s}: {', '.join(t)}" for s, t in failed.items())
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
