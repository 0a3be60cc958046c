#!/usr/bin/env bash
# The main job on built-in synthetic data, end to end on this machine's CPU:
# synth -> train -> evaluate -> inference -> export -> evaluate (ONNX) -> calibrate -> gen_trt_engine -> benchmark,
# for change segmentation and then for defect classification (test vs golden images of inspected parts).
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

# ---------------------------------------------------------------- classification (task: classify)
CSPEC=specs/tiny_classify_cpu.yaml
CDATA="$OUT/classify_data"
CCOMMON=(results_dir="$OUT/classify_results" ${DEMO_OVERRIDES:-})
for split in train:train_dataset val:validation_dataset test:test_dataset infer:infer_dataset; do
  CCOMMON+=(dataset.classify.${split#*:}.csv_path="$CDATA/${split%%:*}.csv" dataset.classify.${split#*:}.images_dir="$CDATA/images")
done
CCKPT="$OUT/classify_results/train/changenet_model_classify_latest.pth"
CONNX="$OUT/classify_results/export/classifier.onnx"
step "classify 1/7 synthetic inspection set (boards under 4 lightings; missing, shifted, bridged parts)"
[ -f "$CDATA/train.csv" ] || $CN dataset synth --task classify --out "$CDATA" --seed 0
step "classify 2/7 train"
$CN train -e $CSPEC "${CCOMMON[@]}"
step "classify 3/7 evaluate (accuracy, false alarm and miss rates, ROC/PR sweep)"
$CN evaluate -e $CSPEC "${CCOMMON[@]}" evaluate.checkpoint="$CCKPT"
step "classify 4/7 inference (inference.csv with siamese_score, pictures of flagged objects)"
$CN inference -e $CSPEC "${CCOMMON[@]}" inference.checkpoint="$CCKPT"
step "classify 5/7 export to ONNX and evaluate it"
$CN export -e $CSPEC "${CCOMMON[@]}" export.checkpoint="$CCKPT" export.onnx_file="$CONNX"
$CN evaluate -e $CSPEC "${CCOMMON[@]}" evaluate.onnx_file="$CONNX" evaluate.results_dir="$OUT/classify_results/evaluate_onnx"
step "classify 6/7 INT8 calibration over (test, golden) pairs and engines"
$CN calibrate -e $CSPEC "${CCOMMON[@]}" calibrate.onnx_file="$CONNX" calibrate.target=onnxruntime "${CALIB[@]}"
for precision in FP16 INT8; do
  $CN gen_trt_engine -e $CSPEC "${CCOMMON[@]}" gen_trt_engine.onnx_file="$CONNX" \
      gen_trt_engine.tensorrt.data_type=$precision "${CALIB[@]}" \
      gen_trt_engine.trt_engine="$OUT/classify_results/gen_trt_engine/classifier_${precision,,}.engine"
done
step "classify 7/7 benchmark"
$CN benchmark -e $CSPEC "${CCOMMON[@]}" benchmark.checkpoint="$CCKPT" benchmark.onnx_file="$CONNX" \
    benchmark.int8_onnx_file="$OUT/classify_results/calibrate/model.onnxruntime.int8.onnx" \
    benchmark.backends=[torch,onnxruntime,onnxruntime-int8] benchmark.batch_sizes=[1,8]
printf '\nDone: results under %s/results and %s/classify_results\n' "$OUT" "$OUT"
