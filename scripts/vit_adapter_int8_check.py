"""Does INT8 need deformable attention's sampling projections in higher precision?

A small NV-DINOv2-layout ViT-Adapter (width 64, 4 blocks) trained for a few epochs on the synthetic set
at 128 x 128, exported, then INT8 for both targets (run on ONNX Runtime) with and without
calibrate.keep_deformable_sampling; prints and writes the accuracy changes. About 8 minutes on 2 cores:

    python scripts/vit_adapter_int8_check.py DATASET_ROOT OUT [EPOCHS]
(DATASET_ROOT: `changenet dataset synth --img-size 128 ...`, e.g. make demo's demo/data.)
"""
import json
import sys
import time

import torch
from torch.utils.data import DataLoader

from changenet.calib.calibrate import build_int8_onnx
from changenet.calib.options import CalibrationOptions, ReportOptions
from changenet.calib.report import accuracy_report
from changenet.config.loader import load_spec
from changenet.data import build_dataset
from changenet.data.options import DataOptions
from changenet.deploy.export import export_onnx
from changenet.deploy.sidecar import ModelContract
from changenet.deploy.verify import sample_pairs
from changenet.evaluation.metrics import ConfusionMatrix
from changenet.model import build_model
from changenet.model.options import ModelOptions
from changenet.train.module import ChangeNetModule

ROOT, OUT = sys.argv[1], sys.argv[2]
EPOCHS = int(sys.argv[3]) if len(sys.argv) > 3 else 8
SMALL = {"depth": 4, "embed_dim": 64, "num_heads": 2, "deform_num_heads": 2, "conv_inplane": 16,
         "interaction_indexes": [[0, 0], [1, 1], [2, 2], [3, 3]]}
base = ["model.backbone.type=vit_large_nvdinov2", "model.decode_head.feature_strides=[4,8,16,32]",
        "model.decode_head.decoder_params.embed_dim=32", "dataset.segment.img_size=128",
        f"dataset.segment.root_dir={ROOT}", f"results_dir={OUT}", "dataset.segment.batch_size=8",
        "dataset.segment.workers=2", "gen_trt_engine.tensorrt.calibration.cal_batch_size=8",
        "gen_trt_engine.tensorrt.calibration.cal_batches=4", "calibrate.report=false"]
cfg = load_spec(None, base)
torch.manual_seed(0)
model = build_model(ModelOptions.from_spec(cfg), load_pretrained=False, **SMALL)
loss_fn = ChangeNetModule.loss_for(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
loader = DataLoader(build_dataset(DataOptions.from_spec(cfg), "train"), batch_size=8, shuffle=True, num_workers=2, drop_last=True)
val = DataLoader(build_dataset(DataOptions.from_spec(cfg), "val"), batch_size=8, num_workers=2)
for epoch in range(EPOCHS):
    model.train()
    start, total = time.time(), 0.0
    for batch in loader:
        loss, _ = loss_fn(model(batch["A"], batch["B"]), batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach())
    model.eval()
    cm = ConfusionMatrix(2)
    with torch.no_grad():
        for batch in val:
            cm.update(model(batch["A"], batch["B"])[-1].argmax(1), batch["label"])
    print(f"epoch {epoch} loss {total / len(loader):.3f} val mIoU {cm.compute()['miou']:.4f} {time.time() - start:.0f} s", flush=True)
onnx_path = f"{OUT}/small_vit.onnx"
export_onnx(model, onnx_path, 128, 128, -1, 17, pairs=sample_pairs(DataOptions.from_spec(cfg), 2, 128, 128),
            sidecar=ModelContract(num_classes=2))
results = {}
for target in ("onnxruntime", "tensorrt"):
    for keep in (False, True):
        over = base + [f"calibrate.target={target}"]
        tag = f"{target}_{'keep' if keep else 'all'}"
        over.append(f"calibrate.output_onnx={OUT}/{tag}.onnx")
        c = load_spec(None, over + [f"calibrate.keep_deformable_sampling={str(keep).lower()}"])
        int8 = build_int8_onnx(CalibrationOptions.from_spec(c), onnx_path, target)
        report = accuracy_report(ReportOptions.from_spec(c, onnx_path, target), int8, target)
        results[tag] = {k: report[k] for k in ("argmax_agreement", "miou_change_points", "mf1_change_points")}
        results[tag]["fp32_miou"] = report["fp32"]["miou"]
        print(tag, results[tag], flush=True)
with open(f"{OUT}/vit_adapter_int8.json", "w") as handle:
    json.dump(results, handle, indent=1)
