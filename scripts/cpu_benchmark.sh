#!/usr/bin/env bash
# The CPU figures of the README: fan_tiny (decoder width 256) at 256 x 256, batch 8, side by side in one
# run: PyTorch eager FP32, ONNX Runtime FP32 and INT8, OpenVINO f32, bf16 (where the CPU has it) and INT8
# (NNCF), then the end-to-end `inference` path over the predict pairs for each; the INT8 calibration
# reports give each INT8 model's accuracy change against FP32 on the validation split. Speed does not
# depend on the weights, so the checkpoint is a one-step training run; run on an otherwise idle machine
# (about 15 minutes on 2 cores). NUM_PREDICT sets the end-to-end pairs (default 48).
set -euo pipefail
OUT=${1:-cpu_benchmark}
CN="${CHANGENET:-.venv/bin/changenet}"
COMMON=(model.backbone.type=fan_tiny_8_p4_hybrid dataset.segment.img_size=256 dataset.segment.root_dir="$OUT/data"
        results_dir="$OUT/results")
CKPT="$OUT/results/train/changenet_model_segment_latest.pth"
ONNX="$OUT/results/export/model.onnx"

[ -f "$OUT/data/list/predict.txt" ] || $CN dataset synth --out "$OUT/data" --num-train 16 --num-val 8 \
    --num-test 8 --num-predict "${NUM_PREDICT:-48}" --img-size 256 --seed 0
[ -f "$CKPT" ] || $CN train "${COMMON[@]}" train.num_epochs=1 train.max_steps_per_epoch=1
[ -f "$ONNX" ] || $CN export "${COMMON[@]}" export.checkpoint="$CKPT" export.onnx_file="$ONNX"
CAL=(gen_trt_engine.tensorrt.calibration.cal_batch_size=8 gen_trt_engine.tensorrt.calibration.cal_batches=2)
INT8="$OUT/results/calibrate/model.onnxruntime.int8.onnx"
[ -f "$INT8" ] || $CN calibrate "${COMMON[@]}" calibrate.onnx_file="$ONNX" calibrate.target=onnxruntime "${CAL[@]}"
OV_INT8="$OUT/results/calibrate/model.openvino.int8.xml"
[ -f "$OV_INT8" ] || $CN calibrate "${COMMON[@]}" calibrate.onnx_file="$ONNX" calibrate.target=openvino "${CAL[@]}"
$CN benchmark "${COMMON[@]}" benchmark.checkpoint="$CKPT" benchmark.onnx_file="$ONNX" benchmark.int8_onnx_file="$INT8" \
    benchmark.openvino_int8_onnx_file="$OV_INT8" \
    "benchmark.backends=[torch,onnxruntime,onnxruntime-int8,openvino-f32,openvino-bf16,openvino-int8]" \
    "benchmark.batch_sizes=[8]" benchmark.warmup=3 benchmark.iterations=5 benchmark.end_to_end=true \
    ${BENCHMARK_OVERRIDES:-}
# bf16 has no calibration report: its validation metrics next to f32's, from the same ONNX.
for precision in f32 bf16; do
  $CN evaluate "${COMMON[@]}" dataset.segment.test_split=val evaluate.onnx_file="$ONNX" evaluate.onnx_runtime=openvino \
      openvino.precision=$precision evaluate.results_dir="$OUT/results/evaluate_openvino_$precision"
done
