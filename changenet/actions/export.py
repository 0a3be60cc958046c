"""`changenet export`: the spec's checkpoint -> ONNX with TAO's tensor names, verified against PyTorch, and
its sidecar (deploy.export.export_onnx does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch
from omegaconf import DictConfig

from changenet.console import status_console
from changenet.deploy.export import check_model_input_size, export_onnx, print_export_table, step
from changenet.deploy.sidecar import ModelContract
from changenet.deploy.verify import sample_pairs
from changenet.errors import SpecError
from changenet.fileio import sha256_file


def export(cfg: DictConfig) -> Dict[str, object]:
    """`changenet export -e spec.yaml export.checkpoint=... export.onnx_file=...`"""
    from changenet.config import require, require_path
    from changenet.data.options import DataOptions
    from changenet.deploy.torch_predictor import pick_device
    from changenet.model import build_model
    from changenet.model.checkpoint import load_model_from_checkpoint
    from changenet.model.options import ModelOptions

    spec = cfg.export
    if spec.input_channel != 3:
        raise SpecError(
            f"spec key 'export.input_channel' is {spec.input_channel} but ChangeNet takes RGB image pairs; "
            "set export.input_channel=3"
        )
    checkpoint = require_path(cfg, "export.checkpoint", "export")
    onnx_path = Path(str(require(cfg, "export.onnx_file", "export"))).expanduser()
    model_options = ModelOptions.from_spec(cfg)
    layout = model_options.layout
    data_height, data_width = layout.size
    height = int(spec.input_height if spec.input_height is not None else data_height)
    width = int(spec.input_width if spec.input_width is not None else data_width)
    if not layout.task.dense and (height, width) != (data_height, data_width):
        raise SpecError(f"export.input_height/input_width are {height}x{width} but the classifier's head is sized for "
                        f"the data's {data_height}x{data_width} ({layout.task.size_keys}); leave them unset or set "
                        f"export.input_height={data_height} export.input_width={data_width}")
    device = pick_device(spec.gpu_id, spec.on_cpu)
    # A shapes-only model on the meta device checks the input size before the (slow) checkpoint load.
    with torch.device("meta"):
        check_model_input_size(build_model(model_options, load_pretrained=False), height, width, model_options.backbone)

    console = status_console
    with step(console, f"Loading checkpoint '{checkpoint}' (export on {device})"):
        model = load_model_from_checkpoint(checkpoint, model_options)
        checkpoint_sha256 = sha256_file(checkpoint)
    with step(console, "Preparing verification inputs"):
        pairs = sample_pairs(DataOptions.from_spec(cfg), 2 if spec.batch_size == -1 else spec.batch_size, height, width)
    facts = ModelContract.of(task=layout.task.name, num_classes=layout.num_classes, backbone=model_options.backbone,
                             mean=list(layout.mean), std=list(layout.std), checkpoint=str(checkpoint),
                             checkpoint_sha256=checkpoint_sha256)
    if layout.task.dense:
        facts = facts.updated(class_names=list(layout.class_names), align_corners=bool(cfg.model.decode_head.align_corners),
                              color_map={str(i): list(rgb) for i, rgb in enumerate(layout.class_colors)})
    else:
        facts = facts.updated(difference_module=str(cfg.model.classify.difference_module), num_golden=layout.num_golden,
                              lights=list(layout.lights), eval_margin=float(cfg.model.classify.eval_margin))
    result = export_onnx(
        model, onnx_path, height, width, spec.batch_size, spec.opset_version, device=device, pairs=pairs,
        sidecar=facts, verbose=spec.verbose, console=console, split_transposed_conv=spec.split_transposed_conv,
        deformable_attention=str(spec.deformable_attention),
    )
    print_export_table(result, console)
    return result.sidecar.to_dict()
