#!/usr/bin/env bash
# The main job on built-in synthetic data, end to end on this machine's CPU:
# synth -> train -> evaluate -> inference -> export -> evaluate (ONNX) -> calibrate -> gen_trt_engine -> benchmark.
set -euo pipefail
OUT=${1:-demo}
CN="${CHANGENET:-.venv/bin/changenet}"
SPEC=specs/tiny_cpu.yaml
# DEMO_OVERRIDES adds spec overrides to every step (e.g. "train.num_epochs=1" for a quick look).
COMMON=(dataset.segment.root_dir="$OUT/data" results_dir="$OUT/results" ${DEMO_OVERRIDES:-})
CALIB=(gen_trt_engine.tensorrt.calibration.cal_batch_size=8 gen_trt_engine.tensorrt.calibration.cal_batches=4)
CKPT="$OUT/results/train/changenet_model_segment_latest.pth"
ONNX="$OUT/results/export/model.onnx"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/9 synthetic dataset"
[ -f "$OUT/data/list/train.txt" ] || $CN dataset synth --out "$OUT/data" --num-train 400 --num-val 100 \
    --num-test 100 --num-predict 16 --img-size 128 --seed 0
step "2/9 train (resumes if interrupted)"
$CN train -e $SPEC "${COMMON[@]}"
step "3/9 evaluate the checkpoint"
$CN evaluate -e $SPEC "${COMMON[@]}" evaluate.checkpoint="$CKPT"
step "4/9 inference on the predict split"
$CN inference -e $SPEC "${COMMON[@]}" inference.checkpoint="$CKPT"
step "5/9 export to ONNX (verified against PyTorch)"
$CN export -e $SPEC "${COMMON[@]}" export.checkpoint="$CKPT" export.onnx_file="$ONNX"
step "6/9 evaluate the ONNX model (ONNX Runtime)"
$CN evaluate -e $SPEC "${COMMON[@]}" evaluate.onnx_file="$ONNX" evaluate.results_dir="$OUT/results/evaluate_onnx"
step "7/9 INT8 calibration over image pairs (ONNX Runtime and TensorRT placements)"
$CN calibrate -e $SPEC "${COMMON[@]}" calibrate.onnx_file="$ONNX" calibrate.target=onnxruntime "${CALIB[@]}"
$CN calibrate -e $SPEC "${COMMON[@]}" calibrate.onnx_file="$ONNX" calibrate.target=tensorrt "${CALIB[@]}"
step "8/9 TensorRT engines (built ahead of time with TensorRT-RTX; running them needs an NVIDIA GPU)"
for precision in FP32 FP16 INT8; do
  $CN gen_trt_engine -e $SPEC "${COMMON[@]}" gen_trt_engine.onnx_file="$ONNX" \
      gen_trt_engine.tensorrt.data_type=$precision "${CALIB[@]}" \
      gen_trt_engine.trt_engine="$OUT/results/gen_trt_engine/model_${precision,,}.engine"
done
step "9/9 benchmark"
$CN benchmark -e $SPEC "${COMMON[@]}" benchmark.checkpoint="$CKPT" benchmark.onnx_file="$ONNX" \
    benchmark.int8_onnx_file="$OUT/results/calibrate/model.onnxruntime.int8.onnx" \
    benchmark.backends=[torch,onnxruntime,onnxruntime-int8,tensorrt] benchmark.batch_sizes=[1,8] \
    benchmark.trt_engine="$OUT/results/gen_trt_engine/model_fp16.engine"
printf '\nDone: results under %s/results\n' "$OUT"
