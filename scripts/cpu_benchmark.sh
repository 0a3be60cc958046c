#!/usr/bin/env bash
# The CPU throughput figures of the README: fan_tiny (decoder width 256) at 256 x 256, batch 8,
# PyTorch eager FP32 vs ONNX Runtime FP32 vs ONNX Runtime INT8, then the end-to-end `inference` path
# over 200 PNG pairs for each. Speed does not depend on the weights, so the checkpoint is a one-step
# training run; run on an otherwise idle machine (about 20 minutes on 2 cores).
set -euo pipefail
OUT=${1:-cpu_benchmark}
CN="${CHANGENET:-.venv/bin/changenet}"
COMMON=(model.backbone.type=fan_tiny_8_p4_hybrid dataset.segment.img_size=256 dataset.segment.root_dir="$OUT/data"
        results_dir="$OUT/results")
CKPT="$OUT/results/train/changenet_model_segment_latest.pth"
ONNX="$OUT/results/export/model.onnx"

[ -f "$OUT/data/list/predict.txt" ] || $CN dataset synth --out "$OUT/data" --num-train 16 --num-val 8 \
    --num-test 8 --num-predict 200 --img-size 256 --seed 0
[ -f "$CKPT" ] || $CN train "${COMMON[@]}" train.num_epochs=1 train.max_steps_per_epoch=1
[ -f "$ONNX" ] || $CN export "${COMMON[@]}" export.checkpoint="$CKPT" export.onnx_file="$ONNX"
INT8="$OUT/results/calibrate/model.onnxruntime.int8.onnx"
[ -f "$INT8" ] || $CN calibrate "${COMMON[@]}" calibrate.onnx_file="$ONNX" calibrate.target=onnxruntime \
    calibrate.report=false gen_trt_engine.tensorrt.calibration.cal_batch_size=8 \
    gen_trt_engine.tensorrt.calibration.cal_batches=2
$CN benchmark "${COMMON[@]}" benchmark.checkpoint="$CKPT" benchmark.onnx_file="$ONNX" benchmark.int8_onnx_file="$INT8" \
    "benchmark.backends=[torch,onnxruntime,onnxruntime-int8]" "benchmark.batch_sizes=[8]" \
    benchmark.warmup=3 benchmark.iterations=5 benchmark.end_to_end=true ${BENCHMARK_OVERRIDES:-}
