"""evaluate / inference through the shared loop: every backend gives the same metrics, files are written."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from changenet.actions.evaluate import evaluate
from changenet.actions.export import export
from changenet.actions.inference import inference
from changenet.config import load_spec
from changenet.errors import DataError, SpecError
from changenet.model import build_model
from changenet.model.checkpoint import save_model_checkpoint
from changenet.model.options import ModelOptions

SMALL = ("model.decode_head.decoder_params.embed_dim=16", "dataset.segment.img_size=64")


@pytest.fixture
def checkpoint(tiny_spec_factory, tmp_path):
    cfg = tiny_spec_factory(*SMALL)
    torch.manual_seed(0)
    model = build_model(ModelOptions.from_spec(cfg), load_pretrained=False)
    return save_model_checkpoint(model, ModelOptions.from_spec(cfg), tmp_path / "model.pth")


def test_onnx_and_checkpoint_give_the_same_metrics(tiny_spec_factory, checkpoint, tmp_path):
    torch_metrics = evaluate(tiny_spec_factory(*SMALL, f"evaluate.checkpoint={checkpoint}",
                                               f"evaluate.results_dir={tmp_path}/eval_torch"))
    onnx = tmp_path / "model.onnx"
    # Opset 16 takes the quick TorchScript exporter; the torch.export one is checked in test_export.py.
    export(tiny_spec_factory(*SMALL, f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx}",
                             "export.opset_version=16"))
    onnx_metrics = evaluate(tiny_spec_factory(*SMALL, f"evaluate.onnx_file={onnx}",
                                              f"evaluate.results_dir={tmp_path}/eval_onnx"))
    assert torch_metrics["backend"] == "torch" and onnx_metrics["backend"] == "onnxruntime"
    assert onnx_metrics["miou"] == pytest.approx(torch_metrics["miou"], abs=1e-4)
    assert onnx_metrics["mf1"] == pytest.approx(torch_metrics["mf1"], abs=1e-4)
    written = json.loads((tmp_path / "eval_onnx" / "metrics.json").read_text())
    assert set(written) >= {"acc", "miou", "mf1", "mprecision", "mrecall", "iou", "f1", "precision", "recall"}
    assert written["num_pairs"] == 4
    vis = sorted((tmp_path / "eval_torch" / "vis").glob("*.png"))
    assert len(vis) == 4
    width = Image.open(vis[0]).size[0]
    assert width == 4 * 64 + 3 * 4  # A | B | prediction | ground truth with separators


def test_inference_writes_masks_at_original_size(tiny_spec_factory, checkpoint, tmp_path):
    summary = inference(tiny_spec_factory(*SMALL, f"inference.checkpoint={checkpoint}"))
    out = tmp_path / "results" / "inference"
    masks = sorted((out / "mask").glob("*.png"))
    assert summary["num_pairs"] == len(masks) == 4
    mask = np.asarray(Image.open(masks[0]))
    assert mask.shape == (64, 64) and mask.max() <= 1
    assert (out / "color" / masks[0].name).is_file() and (out / "vis" / masks[0].name).is_file()


def test_model_source_choice(tiny_spec_factory, checkpoint, tmp_path, caplog):
    with pytest.raises(SpecError, match="set one model source: evaluate.checkpoint, evaluate.onnx_file, evaluate.trt_engine"):
        evaluate(tiny_spec_factory(*SMALL))
    # TAO's example specs name a checkpoint and an engine: the checkpoint is used, and one line says so.
    spec = tmp_path / "tao_style.yaml"
    spec.write_text(f"evaluate:\n  checkpoint: {checkpoint}\n  trt_engine: {tmp_path / 'model.engine'}\n")
    base = [*SMALL, "model.backbone.type=fan_tiny_8_p4_hybrid", f"dataset.segment.root_dir={tiny_spec_factory().dataset.segment.root_dir}",
                                      "dataset.segment.workers=0", f"results_dir={tmp_path / 'r'}"]
    with caplog.at_level(logging.WARNING, logger="changenet.deploy.options"):
        results = evaluate(load_spec(spec, base))
    assert results["backend"] == "torch"
    assert [r.getMessage() for r in caplog.records] == [
        "the spec sets evaluate.checkpoint and evaluate.trt_engine; using evaluate.checkpoint (pass "
        "evaluate.<source>=<file> on the command line to choose another)"]
    # A source on the command line replaces the file's.
    chosen = load_spec(spec, base + [f"evaluate.onnx_file={tmp_path / 'm.onnx'}"])
    assert (chosen.evaluate.checkpoint, chosen.evaluate.trt_engine) == (None, None)


def test_missing_label_is_a_clear_error(synth_root, tiny_spec_factory, checkpoint, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    first = (root / "list" / "test.txt").read_text().split()[0]
    (root / "label" / first).unlink()
    with pytest.raises(DataError, match=first):
        evaluate(tiny_spec_factory(*SMALL, f"dataset.segment.root_dir={root}", f"evaluate.checkpoint={checkpoint}"))


def test_masks_come_back_at_the_input_size_when_the_model_runs_smaller(tiny_spec_factory, checkpoint, tmp_path):
    # the data is 64 x 64; the model runs at 32 x 32 and the scores are resized back before the argmax
    inference(tiny_spec_factory(*SMALL, "dataset.segment.img_size=32", f"inference.checkpoint={checkpoint}"))
    mask = np.asarray(Image.open(next((tmp_path / "results" / "inference" / "mask").glob("*.png"))))
    assert mask.shape == (64, 64)
