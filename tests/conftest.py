"""Fixtures shared by every test file.

synth_root (session scope)
    Path of a tiny synthetic dataset in the LEVIR-CD layout, generated once per test session:
    12 train / 4 val / 4 test / 4 predict pairs, 64x64, two classes (labels 0/255), seed 0.
    Treat it as read-only: it is shared by all tests.
tiny_spec_factory
    Function `(*overrides) -> DictConfig`: the tiny CPU spec below plus extra `key=value` overrides.
tiny_spec
    A loaded spec (changenet.config.load_spec) for a CPU-sized run on synth_root:
    model.backbone.type=fan_tiny_8_p4_hybrid, dataset.segment.img_size=64, batch_size=4, workers=0,
    train.num_epochs=1, results_dir=<tmp_path>/results.
inspection_root (session scope)
    A tiny synthetic inspection set in TAO's CSV format (task classify): 24 train / 8 val / 8 test /
    4 infer objects, two lighting conditions of 32 x 32 px each, seed 0. Read-only, shared.
classify_spec_factory
    Function `(*overrides) -> DictConfig`: a CPU-sized classification spec on inspection_root
    (fan_tiny, learnable head, decoder width 32, batch 4, workers 0, one epoch).
test_seed
    The seed of the tests whose outcome depends on training or quantization (marked `learning`):
    $CHANGENET_TEST_SEED, default 1. scripts/learning_seeds.py runs them under seeds 1 to 5.
record_figure
    Function `(name, value, bar, relation)`: records an asserted figure and its bar (relation ">" or "<")
    as a test property, so scripts/learning_seeds.py can tabulate the margins.
tao_reference (session scope)
    Path of the TAO-made reference models (../shared/tao-reference, or $CHANGENET_TAO_REFERENCE). Tests
    that use it fail when it is missing and CHANGENET_REQUIRE_TAO_REFERENCE=1 (as .ci/run sets), else skip.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import pytest
from omegaconf import DictConfig

from changenet.config import load_spec

# Overrides that switch every training augmentation off (deterministic, unaltered pairs).
NO_AUGMENTATION = [
    "dataset.segment.augmentation.random_flip.enable=false",
    "dataset.segment.augmentation.random_rotate.enable=false",
    "dataset.segment.augmentation.random_color.enable=false",
    "dataset.segment.augmentation.with_scale_random_crop.enable=false",
    "dataset.segment.augmentation.with_random_crop=false",
    "dataset.segment.augmentation.with_random_blur=false",
]
SYNTH_PAIRS = {"num_train": 12, "num_val": 4, "num_test": 4, "num_predict": 4}
SYNTH_IMG_SIZE = 64


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from changenet.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth") / "levir"
    generate_dataset(root, img_size=SYNTH_IMG_SIZE, num_classes=2, seed=0, show_progress=False, **SYNTH_PAIRS)
    return root


@pytest.fixture
def tiny_spec_factory(synth_root: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    def make(*overrides: str) -> DictConfig:
        base = [
            f"dataset.segment.root_dir={synth_root}",
            "model.backbone.type=fan_tiny_8_p4_hybrid",
            f"dataset.segment.img_size={SYNTH_IMG_SIZE}",
            "dataset.segment.batch_size=4",
            "dataset.segment.workers=0",
            "train.num_epochs=1",
            f"results_dir={tmp_path / 'results'}",
        ]
        return load_spec(None, base + list(overrides))

    return make


@pytest.fixture
def tiny_spec(tiny_spec_factory: Callable[..., DictConfig]) -> DictConfig:
    return tiny_spec_factory()


INSPECTION_SIZE = 32
INSPECTION_LIGHTS = ("LowAngleLight", "SolderLight")


@pytest.fixture(scope="session")
def inspection_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from changenet.data.synth_inspection import generate_inspection_dataset

    root = tmp_path_factory.mktemp("synth") / "inspection"
    generate_inspection_dataset(root, num_train=24, num_val=8, num_test=8, num_infer=4, img_size=INSPECTION_SIZE,
                                num_lights=len(INSPECTION_LIGHTS), seed=0, show_progress=False)
    return root


@pytest.fixture
def classify_spec_factory(inspection_root: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    from changenet.data.synth_inspection import spec_overrides

    def make(*overrides: str) -> DictConfig:
        base = ["task=classify", *spec_overrides(inspection_root, INSPECTION_SIZE, INSPECTION_LIGHTS, 1),
                "model.backbone.type=fan_tiny_8_p4_hybrid", "model.decode_head.decoder_params.embed_dim=32",
                "model.classify.difference_module=learnable", "train.classify.loss=ce", "model.classify.eval_margin=0.5",
                "dataset.classify.batch_size=4", "dataset.classify.workers=0", "train.num_epochs=1",
                f"results_dir={tmp_path / 'results'}"]
        return load_spec(None, base + list(overrides))

    return make


# --------------------------------------------------------------------------- outcomes of learning
TEST_SEED = int(os.environ.get("CHANGENET_TEST_SEED", "1"))
# Subprocesses started by tests (CLI runs) leave their Python stack on stderr if they crash in native code.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")

# `make test` runs two pytest-xdist workers on this kind's two cores: each gets its share of them, so the
# thread pools of torch and OpenMP do not oversubscribe the cores; CLI subprocesses inherit the setting.
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if XDIST_WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // XDIST_WORKERS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def test_seed() -> int:
    return TEST_SEED


@pytest.fixture
def record_figure(record_property) -> Callable[[str, float, float, str], None]:
    def record(name: str, value: float, bar: float, relation: str) -> None:
        assert relation in (">", "<"), relation
        record_property(f"figure {name}", json.dumps({"value": float(value), "bar": float(bar), "relation": relation}))

    return record


# --------------------------------------------------------------------------- TAO reference models
# TAO-made models with TAO's outputs (see ../shared/tao-reference/README.md). CI sets
# CHANGENET_REQUIRE_TAO_REFERENCE=1, so a missing reference fails there; elsewhere the tests skip.
TAO_REFERENCE_DIR = Path(os.environ.get("CHANGENET_TAO_REFERENCE",
                                        Path(__file__).resolve().parents[1].parent / "shared" / "tao-reference"))


@pytest.fixture(scope="session")
def tao_reference() -> Path:
    """The folder of TAO reference models; fails (CI) or skips (elsewhere) when it is missing."""
    if (TAO_REFERENCE_DIR / "README.md").is_file():
        return TAO_REFERENCE_DIR
    message = f"TAO reference models not found at {TAO_REFERENCE_DIR} (set CHANGENET_TAO_REFERENCE)"
    if os.environ.get("CHANGENET_REQUIRE_TAO_REFERENCE") == "1":
        pytest.fail(message)
    pytest.skip(message)
