"""TensorRT Predictor: host-side logic everywhere; the CUDA path where a GPU and TensorRT exist."""

import dataclasses
import importlib.util
import logging

import numpy as np
import pytest
from tiny_change_onnx import SIZE, export_tiny_onnx, random_pairs

from changenet.config import load_spec
from changenet.contract import SEGMENT_IO
from changenet.deploy.engine_builder import BuildOptions, build_engine
from changenet.deploy.onnxruntime_predictor import OnnxRuntimePredictor
from changenet.deploy.options import PredictorOptions, open_predictor
from changenet.deploy.predictor import Predictor
from changenet.deploy.sidecar import ENGINE_KIND, ModelContract, TensorRTBuild, sidecar_path
from changenet.deploy.tensorrt_api import gpu_compute_capabilities, load_tensorrt
from changenet.deploy.trt_predictor import (
    NO_GPU_MESSAGE,
    EngineLayout,
    TensorRTPredictor,
    TensorSpec,
    check_engine_layout,
    check_engine_metadata,
    check_engine_runtime,
    ordered_outputs,
)
from changenet.errors import ModelError, UnsupportedError

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
GPUS = gpu_compute_capabilities()
F32 = np.dtype(np.float32)


def _tensors(batch_axis=-1, classes=2, size=SIZE, drop=None):
    specs = [
        TensorSpec("input1", (batch_axis, 3, size, size), F32, True),
        TensorSpec("input0", (batch_axis, 3, size, size), F32, True),
    ]
    scales = {"output3": 8, "output_final": 1, "output0": 8, "output2": 8, "output1": 8}  # deliberately shuffled
    specs += [
        TensorSpec(name, (batch_axis, classes, size // s, size // s), F32, False)
        for name, s in scales.items()
        if name != drop
    ]
    return specs


def _profiles(low, high, size=SIZE):
    return {name: [(low, 3, size, size), (low, 3, size, size), (high, 3, size, size)] for name in ("input0", "input1")}


# --------------------------------------------------------------------------- engine layout
def test_layout_orders_outputs_and_sizes_buffers():
    layout = EngineLayout.from_tensors(_tensors(), _profiles(1, 4), "m.engine")
    assert [t.name for t in layout.inputs] == ["input0", "input1"]
    assert [t.name for t in layout.outputs] == list(SEGMENT_IO.outputs)
    assert layout.input_size == (SIZE, SIZE) and (layout.min_batch, layout.max_batch) == (1, 4)
    assert layout.fixed_batch is None
    final = layout.outputs[-1]
    assert layout.shape(final, 3) == (3, 2, SIZE, SIZE)
    assert layout.nbytes(final, 3) == 3 * 2 * SIZE * SIZE * 4
    assert layout.shape(layout.outputs[0], 4) == (4, 2, SIZE // 8, SIZE // 8)
    with pytest.raises(ModelError, match="batch 5 is outside the engine's profile 1..4"):
        layout.shape(final, 5)
    static = EngineLayout.from_tensors(_tensors(batch_axis=2), _profiles(2, 2), "m.engine")
    assert static.fixed_batch == 2


def test_layout_rejects_what_it_cannot_run():
    with pytest.raises(ModelError, match="'m.engine' is not a changenet model: it lacks output.s. output2"):
        EngineLayout.from_tensors(_tensors(drop="output2"), _profiles(1, 4), "m.engine")
    dynamic_size = [TensorSpec(t.name, (-1, 3, -1, -1), F32, t.is_input) if t.is_input else t for t in _tensors()]
    with pytest.raises(ModelError, match="only the batch axis may be dynamic"):
        EngineLayout.from_tensors(dynamic_size, _profiles(1, 4), "m.engine")
    uneven = _profiles(1, 4)
    uneven["input1"] = [(1, 3, SIZE, SIZE)] * 2 + [(8, 3, SIZE, SIZE)]
    with pytest.raises(ModelError, match="different batch ranges"):
        EngineLayout.from_tensors(_tensors(), uneven, "m.engine")
    assert ordered_outputs(list(reversed(SEGMENT_IO.outputs)), "m.engine") == list(SEGMENT_IO.outputs)


class HostOnlyTensorRTPredictor(TensorRTPredictor):
    """The TensorRT predictor's batching and stitching, with the engine replaced by a numpy function."""

    def __init__(self, layout):
        Predictor.__init__(
            self,
            num_classes=2,
            input_size=layout.input_size,
            fixed_batch_size=layout.fixed_batch,
            max_batch_size=layout.max_batch,
            min_batch_size=layout.min_batch,
        )
        self.layout, self.path, self._slots, self.chunk_sizes = layout, "fake.engine", [], []

    def _forward_chunks(self, chunks):
        for a, _ in chunks:
            assert self.layout.min_batch <= a.shape[0] <= self.layout.max_batch
        self.chunk_sizes.append([a.shape[0] for a, _ in chunks])
        return [fake_engine(a, b) for a, b in chunks]


def fake_engine(a, b):
    """Outputs that depend on each item's values, so a wrongly stitched batch is caught."""
    score = (a - b).mean(axis=(1, 2, 3))[:, None, None, None]
    final = np.concatenate(
        [np.broadcast_to(score, (len(a), 1, SIZE, SIZE)), np.broadcast_to(-score, (len(a), 1, SIZE, SIZE))], axis=1
    )
    return [final[:, :, ::8, ::8].copy() for _ in range(4)] + [final.copy()]


@pytest.mark.parametrize(
    "low,high,batch,chunks", [(1, 4, 9, [4, 4, 1]), (2, 4, 9, [4, 4, 2]), (3, 3, 7, [3, 3, 3]), (1, 8, 5, [5])]
)
def test_chunked_pipeline_matches_one_pass(low, high, batch, chunks):
    layout = EngineLayout.from_tensors(
        _tensors(batch_axis=-1 if low != high else low), _profiles(low, high), "m.engine"
    )
    predictor = HostOnlyTensorRTPredictor(layout)
    a, b = random_pairs(batch)
    outputs = predictor.forward_all(a, b)
    reference = fake_engine(a, b)
    for got, want in zip(outputs, reference):
        np.testing.assert_allclose(got, want)
    assert predictor.chunk_sizes == [chunks]  # every chunk handed to the pipeline in one go


# --------------------------------------------------------------------------- sidecar checks
def _meta(**changes):
    meta = ModelContract(
        kind=ENGINE_KIND,
        tensorrt=TensorRTBuild("tensorrt_rtx", "1.7.1.116"),
        num_classes=2,
        input_height=64,
        input_width=64,
        compute_capabilities=[86, 89],
    )
    return dataclasses.replace(meta, **changes)


def test_sidecar_checked_against_spec_and_machine():
    check_engine_metadata(_meta(), "m.engine", num_classes=2, img_size=64)
    with pytest.raises(ModelError, match="predicts 2 classes but the spec says dataset.segment.num_classes=3"):
        check_engine_metadata(_meta(), "m.engine", num_classes=3, img_size=64)
    with pytest.raises(
        ModelError, match="takes 64x64 inputs but dataset.segment.img_size=256; set dataset.segment.img_size=64"
    ):
        check_engine_metadata(_meta(), "m.engine", num_classes=2, img_size=256)
    with pytest.raises(ModelError, match="not a changenet engine sidecar"):
        check_engine_metadata(_meta(kind="onnx"), "m.engine", num_classes=2, img_size=64)

    check_engine_runtime(_meta(), "m.engine", "1.7.1.200", gpu_id=0, gpu_capability=89)  # build number may differ
    with pytest.raises(UnsupportedError, match="built with tensorrt_rtx 1.7.1.116 but this machine has 1.8.0"):
        check_engine_runtime(_meta(), "m.engine", "1.8.0.10", gpu_id=0, gpu_capability=89)
    with pytest.raises(UnsupportedError, match="built for SM86, SM89 but GPU 1 is SM120"):
        check_engine_runtime(_meta(), "m.engine", "1.7.1.116", gpu_id=1, gpu_capability=120)


# --------------------------------------------------------------------------- real engines
@pytest.fixture(scope="module")
def rtx_engine(tmp_path_factory):
    if not HAS_RTX:
        pytest.skip("tensorrt-rtx is not installed (pip install 'changenet[rtx]')")
    folder = tmp_path_factory.mktemp("engine")
    onnx_path = export_tiny_onnx(folder / "tiny.onnx")
    build_engine(
        onnx_path,
        folder / "tiny.engine",
        BuildOptions(builder="tensorrt_rtx", compute_capabilities=[86, 89], max_batch_size=4, show_progress=False),
    )
    return folder / "tiny.engine"


def _cfg(*extra):
    return load_spec(None, [f"dataset.segment.img_size={SIZE}", *extra], action="evaluate")


@pytest.mark.skipif(bool(GPUS), reason="this machine has a GPU; the no-GPU error cannot be seen here")
def test_without_gpu_the_error_is_one_clear_line(rtx_engine):
    with pytest.raises(UnsupportedError) as exc_info:
        open_predictor(PredictorOptions.for_model(_cfg(), "trt_engine", rtx_engine))
    assert str(exc_info.value) == NO_GPU_MESSAGE


def test_spec_mismatch_is_reported_before_looking_for_a_gpu(rtx_engine, tmp_path):
    with pytest.raises(ModelError, match="predicts 2 classes but the spec says dataset.segment.num_classes=3"):
        open_predictor(PredictorOptions.for_model(_cfg("dataset.segment.num_classes=3"), "trt_engine", rtx_engine))
    with pytest.raises(ModelError, match="engine '.*nothing.engine' does not exist"):
        open_predictor(PredictorOptions.for_model(_cfg(), "trt_engine", tmp_path / "nothing.engine"))


@pytest.mark.skipif(bool(GPUS), reason="this machine has a GPU; the no-GPU error cannot be seen here")
def test_engine_without_sidecar_is_accepted_and_said_so(rtx_engine, tmp_path, caplog):
    # Engines of TAO Deploy and trtexec have no sidecar: their layout is read from the engine (on a GPU).
    lonely = tmp_path / "lonely.engine"
    lonely.write_bytes(rtx_engine.read_bytes())
    with caplog.at_level(logging.WARNING, logger="changenet.deploy.trt_predictor"):
        with pytest.raises(UnsupportedError, match="this engine needs an NVIDIA GPU"):
            open_predictor(PredictorOptions.for_model(_cfg(), "trt_engine", lonely))
    assert ["has no changenet sidecar" in r.getMessage() for r in caplog.records] == [True]


def test_engine_tensors_are_checked_against_the_spec():
    layout = EngineLayout.from_tensors(_tensors(), _profiles(1, 4), "m.engine")
    check_engine_layout(layout, "m.engine", num_classes=2, img_size=SIZE)
    with pytest.raises(ModelError, match="'m.engine' predicts 2 classes but the spec says dataset.segment.num_classes=5"):
        check_engine_layout(layout, "m.engine", num_classes=5, img_size=SIZE)
    with pytest.raises(ModelError, match=rf"takes {SIZE}x{SIZE} inputs but dataset.segment.img_size=256"):
        check_engine_layout(layout, "m.engine", num_classes=2, img_size=256)


def _gpu_skip_reason():
    if not GPUS:
        return "no NVIDIA GPU on this machine"
    if importlib.util.find_spec("cuda") is None:
        return "cuda-python is not installed (pip install 'changenet[trt]')"
    if importlib.util.find_spec("tensorrt") is not None:
        return None
    if HAS_RTX and GPUS[0] in load_tensorrt("tensorrt_rtx").supported_compute_capabilities():
        return None
    return "no TensorRT on this machine can build for its GPU (install tensorrt or tensorrt-rtx)"


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_skip_reason() is not None, reason=str(_gpu_skip_reason()))
@pytest.mark.parametrize("streams", [1, 2])
def test_engine_matches_onnxruntime_on_gpu(tmp_path, streams):
    onnx_path = export_tiny_onnx(tmp_path / "tiny.onnx")
    engine = tmp_path / "tiny.engine"
    build_engine(
        onnx_path, engine, BuildOptions(min_batch_size=1, opt_batch_size=2, max_batch_size=4, show_progress=False)
    )
    a, b = random_pairs(7)  # two chunks (4 + 3): the second is enqueued before the first is collected
    with OnnxRuntimePredictor(onnx_path, num_classes=2) as reference:
        expected = reference.forward_all(a, b)
    assert ModelContract.load(engine).compute_capabilities == [GPUS[0]] and sidecar_path(engine).is_file()
    with TensorRTPredictor(engine, num_classes=2, streams=streams) as predictor:
        outputs = predictor.forward_all(a, b)
        again = predictor.forward_all(a[:1], b[:1])
    for got, want in zip(outputs, expected):
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)  # TF32 convolutions on the GPU
    np.testing.assert_allclose(again[-1], outputs[-1][:1], rtol=1e-5, atol=1e-5)
