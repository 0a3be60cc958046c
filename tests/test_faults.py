"""Faults leave only whole files.

A SIGKILL at any moment of calibrate, gen_trt_engine, tiled inference, train and export leaves every
output under its final name complete (ONNX loads, JSON parses, an engine has its sidecar, a checkpoint
reads, a mask has its full size) or absent; anything else is a temporary name (fileio.leftover_pattern),
which the next run removes, and that run finishes. Damaged caches (timing cache, calibration cache,
OpenVINO's compiled models, changenet_stretch.json, the latest checkpoint) are rebuilt with one warning
line or refused with one error line naming the file; never a traceback.

The kill tests run the real CLI in a subprocess and kill it at moments seen from outside: a while after
the start, when a new temporary file appears, when a final file is (re)written. Which moment the kill
lands in depends on the machine's speed, so every check holds whatever the process had done by then.
The instant between two renames of a group is too short to hit from outside: the commit helper's tests
fail os.replace / unlink at each step instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import pytest
from PIL import Image
from tiny_change_onnx import SIZE, export_tiny_onnx
from typer.testing import CliRunner

from changenet.calib.cache import read_checked_cache
from changenet.cli import app
from changenet.deploy.sidecar import ModelContract, read_sidecar, sidecar_path
from changenet.errors import ModelError
from changenet.fileio import (
    atomic_group,
    is_leftover,
    publish_group,
    remove_leftovers,
    temp_beside,
    temp_folder_beside,
)
from changenet.model.checkpoint import epoch_checkpoint_name, latest_checkpoint_name, read_checkpoint
from changenet.model.options import ModelOptions

CLI = [sys.executable, "-m", "changenet.cli"]
# One torch thread per run: on a shared 2-core machine a second multi-threaded torch process slows an
# oversubscribed run five-fold; what is tested does not depend on the speed.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
POLL_SECONDS = 0.005
RUN_TIMEOUT = 300
# A narrow decoder at 32 x 32 (as tests/test_resume.py): what is tested here does not depend on the size.
SMALL_FAN = ("model.backbone.type=fan_tiny_8_p4_hybrid", "model.decode_head.decoder_params.embed_dim=32",
             "dataset.segment.img_size=32", "dataset.segment.workers=0")
LATEST = latest_checkpoint_name("segment")

Moment = Callable[[], Callable[[], bool]]  # armed right before the start: returns "kill now?"


# --------------------------------------------------------------------------- what a whole file is
def check_whole(path: Path, sizes: Dict[str, Tuple[int, int]]) -> None:
    """Raise unless the file under a final name is complete (by what it is)."""
    name = path.name
    if name.endswith(".onnx"):
        onnx.checker.check_model(str(path))
        read_sidecar(path, required=True)  # published with the model, and of the model's size
    elif name.endswith(".engine"):
        assert ModelContract.load(path, required=True).is_engine
    elif name.endswith(".pth"):
        read_checkpoint(path)
    elif name == "status.json":  # appended line by line: a kill may cut the last line, read_status skips it
        lines = path.read_text().split("\n")
        assert all(json.loads(line) for line in lines[:-1]), path
    elif name.endswith(".json"):
        json.loads(path.read_text())
    elif name.endswith(".cache"):
        cache, damage = read_checked_cache(path, ModelContract.load(path, required=True, check_size=False))
        assert damage is None and cache.scales, (path, damage)
    elif path.suffix in (".png", ".tif"):
        with Image.open(path) as image:
            image.load()
            assert image.size == sizes[path.stem], (path, image.size)
    elif name.endswith((".log", ".onnx.data")):
        pass  # ModelOpt's log; external weights are checked with their model
    else:
        raise AssertionError(f"unexpected file '{path}'")


def survey(folders: Sequence[Path], sizes: Dict[str, Tuple[int, int]]) -> List[Path]:
    """Check every final-named file under `folders`; return the temporary entries."""
    leftovers: List[Path] = []
    pending = [f for f in folders if f.is_dir()]
    while pending:
        for entry in sorted(pending.pop().iterdir()):
            if is_leftover(entry):
                leftovers.append(entry)
            elif entry.is_dir():
                pending.append(entry)
            else:
                check_whole(entry, sizes)
    return leftovers


def leftovers_in(folders: Sequence[Path]) -> set:
    found = set()
    for folder in folders:
        if folder.is_dir():
            found |= {entry for entry in folder.iterdir() if is_leftover(entry)}
    return found


# --------------------------------------------------------------------------- moments to kill at
def after(seconds: float) -> Moment:
    def arm():
        start = time.monotonic()
        return lambda: time.monotonic() - start >= seconds
    return arm


def new_temp_in(*folders: Path) -> Moment:
    """A temporary file or folder that was not there at the start appears."""
    def arm():
        before = leftovers_in(folders)
        return lambda: bool(leftovers_in(folders) - before)
    return arm


def written(path: Path) -> Moment:
    """`path` appears or is replaced (a publish gives it a new inode)."""
    def identity():
        try:
            stat = path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def arm():
        before = identity()
        return lambda: identity() not in (None, before)
    return arm


def kill_at(command: List[str], moment: Moment, log: Path, cwd: Path) -> bool:
    """Run `command` and SIGKILL it as soon as `moment` says so; False when it finished first (then it
    must have succeeded)."""
    ready = moment()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=ENV)
        deadline = time.monotonic() + RUN_TIMEOUT
        try:
            while process.poll() is None:
                if ready():
                    process.kill()  # SIGKILL: no clean-up of any kind
                    process.wait()
                    return True
                assert time.monotonic() < deadline, f"{command[3]} ran past {RUN_TIMEOUT} s"
                time.sleep(POLL_SECONDS)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, log.read_text()[-3000:]
    return False


def kill_then_rerun(command: List[str], moments: Sequence[Moment], folders: Sequence[Path],
                    expected: Sequence[Path], tmp_path: Path, sizes: Optional[Dict[str, Tuple[int, int]]] = None
                    ) -> subprocess.CompletedProcess:
    """Kill `command` at each moment in turn (each run starts from what the last one left), checking after
    each that every output is whole or absent; then run it to the end: it must succeed without a traceback,
    leave no temporary file and have written every `expected` file whole."""
    sizes = sizes or {}
    landed = []
    for number, moment in enumerate(moments):
        landed.append(kill_at(command, moment, tmp_path / f"killed_{number}.log", tmp_path))
        survey(folders, sizes)  # raises on a damaged final-named file; temporary names may remain
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=tmp_path, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert survey(folders, sizes) == [], "the rerun left temporary files"
    for path in expected:
        assert path.is_file(), path
    assert any(landed), "no kill landed before the run ended"
    return done


# --------------------------------------------------------------------------- the commit helper
def _old_group(folder: Path) -> Tuple[Path, Path, Path]:
    model, sidecar, weights = folder / "model.onnx", folder / "model.onnx.json", folder / "model.onnx.data"
    model.write_bytes(b"old model")
    weights.write_bytes(b"old weights")
    sidecar.write_text(json.dumps({"version": "old", "file_bytes": model.stat().st_size}))
    return model, sidecar, weights


def _state(model: Path, sidecar: Path, weights: Path) -> str:
    """Which of the allowed states the three files are in; AssertionError for any other."""
    if not model.exists():
        return "no model"  # stray companions of an absent model: every reader opens the model first
    meta = read_sidecar(model)  # never a model without its sidecar, never one of another size
    assert meta, "a model without its sidecar"
    expected = {"old": (b"old model", b"old weights"), "new": (b"the new model", b"new weights")}[meta["version"]]
    assert (model.read_bytes(), weights.read_bytes()) == expected, "a model beside another's weights"
    return meta["version"]


@pytest.mark.parametrize("step", range(4))  # remove old model, rename sidecar, rename weights, rename model
def test_a_crash_between_the_renames_of_a_group_leaves_an_allowed_state(tmp_path, monkeypatch, step):
    model, sidecar, weights = _old_group(tmp_path)
    new_model, new_weights = temp_beside(model), temp_beside(weights)
    new_model.write_bytes(b"the new model")
    new_weights.write_bytes(b"new weights")
    new_sidecar = temp_beside(sidecar)
    new_sidecar.write_text(json.dumps({"version": "new", "file_bytes": new_model.stat().st_size}))

    calls = []
    real_replace, real_unlink = os.replace, os.unlink

    def failing(real):
        def call(*args, **kwargs):
            calls.append(args[0])
            if len(calls) == step + 1:
                raise OSError("simulated crash")
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(os, "replace", failing(real_replace))
    monkeypatch.setattr(os, "unlink", failing(real_unlink))
    with pytest.raises(OSError, match="simulated crash"):
        publish_group(model, new_model, [(sidecar, new_sidecar), (weights, new_weights)])
    monkeypatch.undo()

    state = _state(model, sidecar, weights)
    assert state == ("old" if step == 0 else "no model")
    # The next run removes the temporary files and publishes its own group whole.
    with atomic_group(model, sidecar, weights) as (model_tmp, sidecar_tmp, weights_tmp):
        assert remove_leftovers(tmp_path, model.name, sidecar.name, weights.name)
        model_tmp.write_bytes(b"the new model")
        weights_tmp.write_bytes(b"new weights")
        sidecar_tmp.write_text(json.dumps({"version": "new", "file_bytes": model_tmp.stat().st_size}))
    assert _state(model, sidecar, weights) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data", "model.onnx.json"]


def test_a_failed_group_keeps_the_old_files_and_drops_its_own(tmp_path):
    model, sidecar, weights = _old_group(tmp_path)
    with pytest.raises(RuntimeError, match="verification failed"):
        with atomic_group(model, sidecar, weights) as temps:
            temps[0].write_bytes(b"half a model")
            raise RuntimeError("verification failed")
    assert _state(model, sidecar, weights) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data", "model.onnx.json"]


def test_a_companion_the_new_version_lacks_is_removed(tmp_path):
    model, sidecar, weights = _old_group(tmp_path)
    with atomic_group(model, sidecar, weights) as (model_tmp, sidecar_tmp, weights_tmp):
        model_tmp.write_bytes(b"small model, no external weights")
        sidecar_tmp.write_text("{}")
        weights_tmp.unlink()
    assert not weights.exists() and model.read_bytes() == b"small model, no external weights"


def test_leftover_removal_touches_only_our_temporary_names(tmp_path):
    ours = [temp_beside(tmp_path / "model.onnx"), temp_beside(tmp_path / "model.onnx.json"),
            temp_beside(tmp_path / "model.onnx", folder=True)]
    (ours[2] / "model.onnx").write_bytes(b"exporter output")
    others = ["model.onnx", ".model.onnx.mine.tmp", ".model.onnx.abcdefgh.tmp.bak", "notes.tmp", ".hidden"]
    for name in others:
        (tmp_path / name).write_text("keep")
    unrelated = temp_beside(tmp_path / "other.engine")

    removed = remove_leftovers(tmp_path, "model.onnx", "model.onnx.json")
    assert sorted(removed) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + [unrelated.name])
    assert remove_leftovers(tmp_path) == [unrelated]  # no names: every changenet temporary name
    assert remove_leftovers(tmp_path / "absent") == []


def test_export_work_folder_has_a_temporary_name(tmp_path):
    with temp_folder_beside(tmp_path / "model.onnx") as work:
        assert is_leftover(work, "model.onnx") and work.is_dir()
    assert not work.exists()


def test_a_model_beside_a_sidecar_of_another_size_is_refused_in_one_line(tmp_path):
    model = export_tiny_onnx(tmp_path / "tiny.onnx")
    meta = read_sidecar(model)
    sidecar_path(model).write_text(json.dumps({**meta, "file_bytes": model.stat().st_size + 7}))
    with pytest.raises(ModelError) as refused:
        read_sidecar(model)
    message = str(refused.value)
    assert "\n" not in message and str(model) in message and str(sidecar_path(model)) in message


def test_an_engine_beside_a_stale_sidecar_is_refused_before_it_is_loaded(tmp_path):
    from changenet.config import load_spec
    from changenet.deploy.options import PredictorOptions, open_predictor

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"a newer engine" * 100)
    sidecar_path(engine).write_text(json.dumps({"kind": "tensorrt_engine", "engine_bytes": 999, "num_classes": 2,
                                                "input_height": SIZE, "input_width": SIZE}))
    cfg = load_spec(None, [f"dataset.segment.img_size={SIZE}"])
    with pytest.raises(ModelError, match=r"has 1400 bytes but its sidecar .* records 999"):
        open_predictor(PredictorOptions.for_model(cfg, "trt_engine", engine))


# --------------------------------------------------------------------------- kill tests, one per action
@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    return export_tiny_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


def test_killed_gen_trt_engine_leaves_whole_files(tmp_path, tiny_onnx):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install 'changenet[rtx]')")
    out = tmp_path / "engines"
    engine = out / "model.engine"
    command = CLI + ["gen_trt_engine", f"results_dir={tmp_path / 'results'}", f"dataset.segment.img_size={SIZE}",
                     f"gen_trt_engine.onnx_file={tiny_onnx}", f"gen_trt_engine.trt_engine={engine}",
                     "gen_trt_engine.tensorrt.builder=tensorrt_rtx", "gen_trt_engine.tensorrt.compute_capabilities=[86]",
                     "gen_trt_engine.tensorrt.max_batch_size=2"]
    # Cheap enough (a build of the tiny model takes a fraction of a second) for every moment.
    kill_then_rerun(command, [after(1.0), new_temp_in(out), written(engine)], [out], [engine, sidecar_path(engine)],
                    tmp_path)


@pytest.mark.parametrize("kills", [
    pytest.param(["temp", "model"], id="temp-model"),
    pytest.param(["start", "temp", "cache", "model"], id="start-temp-cache-model", marks=pytest.mark.slow),
])
def test_killed_calibrate_leaves_whole_files(tmp_path, tiny_onnx, synth_root, kills):
    out = tmp_path / "results" / "calibrate"
    command = CLI + ["calibrate", f"results_dir={tmp_path / 'results'}", f"dataset.segment.root_dir={synth_root}",
                     f"dataset.segment.img_size={SIZE}", "dataset.segment.workers=0", f"calibrate.onnx_file={tiny_onnx}",
                     "calibrate.target=onnxruntime", "gen_trt_engine.tensorrt.calibration.cal_batch_size=2",
                     "gen_trt_engine.tensorrt.calibration.cal_batches=2"]
    int8 = out / "model.onnxruntime.int8.onnx"
    moments = {"start": after(2.0), "temp": new_temp_in(out), "cache": written(out / "cal.cache"), "model": written(int8)}
    done = kill_then_rerun(command, [moments[k] for k in kills], [out],
                           [int8, sidecar_path(int8), out / "cal.cache", out / "cal.cache.json",
                            out / "calibration_report.json"], tmp_path)
    assert "Traceback" not in done.stdout


def _scene_root(root: Path) -> Dict[str, Tuple[int, int]]:
    """Three pairs for tiled inference (two PNG, one GeoTIFF), larger than the 32 px tiles; their sizes."""
    from changenet.geo import write_geotiff

    rng = np.random.default_rng(0)
    sizes = {"field": (320, 240), "town": (288, 304), "coast": (304, 256)}  # (width, height)
    for folder in ("A", "B", "list"):
        (root / folder).mkdir(parents=True)
    names = []
    for stem, (width, height) in sizes.items():
        for side in ("A", "B"):
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            if stem == "coast":
                from rasterio.transform import Affine

                write_geotiff(root / side / f"{stem}.tif", pixels, "EPSG:32633", Affine(0.5, 0, 500000, 0, -0.5, 4000000))
            else:
                Image.fromarray(pixels).save(root / side / f"{stem}.png")
        names.append(f"{stem}.tif" if stem == "coast" else f"{stem}.png")
    (root / "list" / "predict.txt").write_text("\n".join(names) + "\n")
    return sizes


@pytest.mark.parametrize("kills", [
    pytest.param(["temp", "mask"], id="temp-mask"),
    pytest.param(["start", "temp", "mask", "summary"], id="start-temp-mask-summary", marks=pytest.mark.slow),
])
def test_killed_tiled_inference_leaves_whole_masks(tmp_path, tiny_onnx, kills):
    pytest.importorskip("rasterio")
    sizes = _scene_root(tmp_path / "scenes")
    out = tmp_path / "results" / "inference"
    command = CLI + ["inference", f"results_dir={tmp_path / 'results'}", f"dataset.segment.root_dir={tmp_path / 'scenes'}",
                     f"dataset.segment.img_size={SIZE}", "dataset.segment.workers=0", f"inference.onnx_file={tiny_onnx}",
                     "inference.tiling.enable=true", "inference.tiling.batch_size=4"]
    moments = {"start": after(2.0), "temp": new_temp_in(out / "mask", out / "color"),
               "mask": written(out / "mask" / "town.png"), "summary": written(out / "inference.json")}
    masks = [out / folder / f"{stem}{'.tif' if stem == 'coast' else '.png'}" for folder in ("mask", "color") for stem in sizes]
    kill_then_rerun(command, [moments[k] for k in kills], [out], masks + [out / "inference.json"], tmp_path, sizes)


@pytest.mark.parametrize("kills,epochs", [
    pytest.param(["temp"], 1, id="temp"),
    pytest.param(["start", "temp", "latest"], 2, id="start-temp-latest", marks=pytest.mark.slow),
])
def test_killed_training_leaves_whole_checkpoints(tmp_path, synth_root, kills, epochs):
    results = tmp_path / "results" / "train"
    command = CLI + ["train", f"results_dir={tmp_path / 'results'}", f"dataset.segment.root_dir={synth_root}", *SMALL_FAN,
                     "dataset.segment.batch_size=2", "train.max_steps_per_epoch=2", f"train.num_epochs={epochs}"]
    moments = {"start": after(4.0), "temp": new_temp_in(results), "latest": written(results / LATEST)}
    kill_then_rerun(command, [moments[k] for k in kills], [results],
                    [results / LATEST, results / epoch_checkpoint_name(epochs - 1), results / "status.json"], tmp_path)
    assert read_checkpoint(results / LATEST).epoch == epochs - 1


@pytest.fixture(scope="module")
def fan_checkpoint(tmp_path_factory, synth_root) -> Path:
    import torch

    from changenet.config import load_spec
    from changenet.model import build_model
    from changenet.model.checkpoint import save_model_checkpoint

    cfg = load_spec(None, [f"dataset.segment.root_dir={synth_root}", *SMALL_FAN])
    torch.manual_seed(0)
    return save_model_checkpoint(build_model(ModelOptions.from_spec(cfg), load_pretrained=False).eval(), ModelOptions.from_spec(cfg),
                                 tmp_path_factory.mktemp("fan") / "model_epoch_000.pth")


@pytest.mark.parametrize("kills", [
    pytest.param(["temp"], id="temp"),
    pytest.param(["start", "temp", "model"], id="start-temp-model", marks=pytest.mark.slow),
])
def test_killed_export_leaves_whole_files(tmp_path, synth_root, fan_checkpoint, kills):
    out = tmp_path / "out"
    onnx_path = out / "model.onnx"
    # TorchScript exporter (opset 16) and one verification batch: the cheapest export of a real ChangeNet.
    command = CLI + ["export", f"results_dir={tmp_path / 'results'}", f"dataset.segment.root_dir={synth_root}", *SMALL_FAN,
                     f"export.checkpoint={fan_checkpoint}", f"export.onnx_file={onnx_path}", "export.opset_version=16",
                     "export.batch_size=1"]
    moments = {"start": after(3.0), "temp": new_temp_in(out), "model": written(onnx_path)}
    kill_then_rerun(command, [moments[k] for k in kills], [out], [onnx_path, sidecar_path(onnx_path)], tmp_path)


# --------------------------------------------------------------------------- damaged caches
def _cli(*args: str):
    """The CLI in this process (cheap: nothing to import again); stderr apart from stdout."""
    return CliRunner().invoke(app, list(args))


def _lines_naming(text: str, name: str) -> List[str]:
    return [line for line in text.splitlines() if name in line]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_damaged_timing_cache_becomes_one_warning_and_a_new_cache(tmp_path, caplog):
    """TensorRT rejects a damaged timing cache in one of three ways, by version; each gives one warning line
    and a fresh cache. A small stand-in for TensorRT's builder config: the timing cache is full TensorRT's
    (tensorrt-rtx ignores it), and full TensorRT cannot run here (no GPU, no NVIDIA package index)."""
    import logging
    import types

    from changenet.deploy.engine_builder import _load_timing_cache

    class Config:
        def __init__(self, rejects: str) -> None:
            self.rejects, self.cache = rejects, None

        def create_timing_cache(self, blob: bytes):
            if blob and not blob.startswith(b"TIMING"):
                if self.rejects == "raises":
                    raise RuntimeError("Serialized timing cache is corrupted")
                if self.rejects == "returns_none":
                    return None
            return ("cache", blob)

        def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
            if self.rejects == "mismatch" and cache[1]:
                return False
            self.cache = cache
            return True

    trt = types.SimpleNamespace(has_timing_cache=True)
    path = tmp_path / "timing.cache"
    for rejects in ("raises", "returns_none", "mismatch"):
        path.write_bytes(b"TIMx")  # cut short
        config = Config(rejects)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="changenet.tensorrt"):
            assert _load_timing_cache(trt, config, path) == b"TIMx"
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and str(path) in warnings[0] and "new one" in warnings[0], warnings
        assert config.cache == ("cache", b"")  # built with a fresh cache, written over the damaged one afterwards
    path.write_bytes(b"TIMING whole")
    config = Config("raises")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="changenet.tensorrt"):
        _load_timing_cache(trt, config, path)
    assert not caplog.records and config.cache == ("cache", b"TIMING whole")


def test_damaged_calibration_cache_is_rebuilt_with_one_warning(tmp_path, tiny_onnx, synth_root):
    results = tmp_path / "results"
    cache = results / "calibrate" / "cal.cache"
    args = ["calibrate", f"results_dir={results}", f"dataset.segment.root_dir={synth_root}",
            f"dataset.segment.img_size={SIZE}", "dataset.segment.workers=0", f"calibrate.onnx_file={tiny_onnx}",
            "calibrate.target=onnxruntime", "calibrate.report=false",
            "gen_trt_engine.tensorrt.calibration.cal_batch_size=2", "gen_trt_engine.tensorrt.calibration.cal_batches=2"]
    first = _cli(*args)
    assert first.exit_code == 0, first.output
    whole = cache.read_bytes()
    # Cut at a line end, which still parses: only the sidecar's record tells it from a whole cache.
    cache.write_bytes(whole[: whole.rindex(b"\n", 0, len(whole) // 2) + 1])

    again = _cli(*args)
    assert again.exit_code == 0, again.output
    assert "Traceback" not in again.stderr
    said = _lines_naming(again.stderr, str(cache))
    assert len(said) == 1 and said[0].startswith("warning:") and "damaged" in said[0], again.stderr
    assert cache.read_bytes() == whole  # the same pairs and seed give the same cache back

    # A cache whose sidecar is unreadable cannot be matched to a model: refused in one line naming it.
    sidecar_path(cache).write_text('{"source_onnx": ')
    refused = _cli(*args)
    assert refused.exit_code == 2 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(cache) in lines[0], refused.stderr


def test_damaged_stretch_record_is_estimated_again_with_one_warning(tmp_path, tiny_onnx):
    from changenet.data.pixels import STRETCH_FILE
    from changenet.data.synth import generate_dataset

    root = tmp_path / "chips16"
    generate_dataset(root, num_train=4, num_val=0, num_test=2, num_predict=0, img_size=SIZE, bit_depth=16,
                     show_progress=False)
    record = root / STRETCH_FILE
    args = ["evaluate", f"results_dir={tmp_path / 'results'}", f"dataset.segment.root_dir={root}",
            f"dataset.segment.img_size={SIZE}", "dataset.segment.workers=0", f"evaluate.onnx_file={tiny_onnx}"]
    first = _cli(*args)
    assert first.exit_code == 0, first.output
    whole = json.loads(record.read_text())
    metrics = json.loads((tmp_path / "results" / "evaluate" / "metrics.json").read_text())
    _truncate(record)
    temp_beside(record).write_text("{")  # and a temporary file of a killed write

    again = _cli(*args)
    assert again.exit_code == 0, again.output
    assert "Traceback" not in again.stderr
    said = _lines_naming(again.stderr, str(record))
    assert len(said) == 1 and said[0].startswith("warning:") and "damaged" in said[0], again.stderr
    assert json.loads(record.read_text()) == whole
    assert json.loads((tmp_path / "results" / "evaluate" / "metrics.json").read_text())["miou"] == metrics["miou"]
    assert not [p for p in root.iterdir() if is_leftover(p)]


@pytest.fixture
def one_torch_thread():
    """Training in this process with one thread (see ENV); the setting is put back afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_damaged_latest_checkpoint_falls_back_or_is_refused(tmp_path, synth_root, one_torch_thread):
    results = tmp_path / "results" / "train"
    args = ["train", f"results_dir={tmp_path / 'results'}", f"dataset.segment.root_dir={synth_root}", *SMALL_FAN,
            "dataset.segment.batch_size=2", "train.max_steps_per_epoch=1"]
    first = _cli(*args, "train.num_epochs=1")
    assert first.exit_code == 0, first.output
    latest = results / LATEST
    _truncate(latest)

    # A readable epoch checkpoint: resumed from, with one warning naming both files.
    resumed = _cli(*args, "train.num_epochs=2")
    assert resumed.exit_code == 0, resumed.output
    assert "Traceback" not in resumed.stderr
    said = _lines_naming(resumed.stderr, str(latest))
    assert len(said) == 1 and said[0].startswith("warning:"), resumed.stderr
    assert str(results / epoch_checkpoint_name(0)) in said[0]
    assert read_checkpoint(latest).epoch == 1

    # None readable: refused in one line that names the file and says to delete it.
    for checkpoint in results.glob("model_epoch_*.pth"):
        checkpoint.unlink()
    _truncate(latest)
    refused = _cli(*args, "train.num_epochs=3")
    assert refused.exit_code == 2 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(latest) in lines[0] and "delete it" in lines[0]


def test_damaged_openvino_cache_is_compiled_again_with_one_warning(tmp_path, tiny_onnx, synth_root):
    """OpenVINO runs in a process of its own (its thread pools stay once loaded): the real CLI, three times."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'changenet[openvino]')")
    cache_root = tmp_path / "ov_cache"
    command = CLI + ["evaluate", f"results_dir={tmp_path / 'results'}", f"dataset.segment.root_dir={synth_root}",
                     f"dataset.segment.img_size={SIZE}", "dataset.segment.workers=0", f"evaluate.onnx_file={tiny_onnx}",
                     "evaluate.onnx_runtime=openvino", "openvino.precision=f32", f"openvino.cache_dir={cache_root}"]
    metrics_file = tmp_path / "results" / "evaluate" / "metrics.json"

    def run() -> subprocess.CompletedProcess:
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=tmp_path, env=ENV)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        return done

    first = run()
    assert not _lines_naming(first.stderr, str(cache_root))
    metrics = json.loads(metrics_file.read_text())
    (blob,) = cache_root.glob("*/*.blob")
    whole = blob.read_bytes()

    def damaged_once(damage: Callable[[bytes], bytes]) -> None:
        blob.write_bytes(damage(whole))
        done = run()
        said = _lines_naming(done.stderr, str(blob.parent))
        assert len(said) == 1 and said[0].startswith("warning:") and "compiling" in said[0], done.stderr
        assert json.loads(metrics_file.read_text())["confusion_matrix"] == metrics["confusion_matrix"]
        assert blob.read_bytes() == whole  # compiled again into the same entry

    damaged_once(lambda data: data[: len(data) // 2])  # cut short (OpenVINO alone recompiles silently)

    def flip_a_weight_byte(data: bytes) -> bytes:  # OpenVINO alone loads this and computes other outputs
        flipped = bytearray(data)
        flipped[len(data) * 3 // 4] ^= 0xFF
        return bytes(flipped)

    damaged_once(flip_a_weight_byte)
