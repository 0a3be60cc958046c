"""The action layer: one module per `changenet <action>`, and the only code (besides config/ and the
Lightning module and datamodule) that reads the whole spec. Each action turns the spec into the typed
options of the library below it (PredictorOptions, BuildOptions, ...) and composes the library's steps;
for example gen_trt_engine calibrates (calib) before it builds (deploy), so deploy never calls up into calib.

    config  <  data, model  <  deploy  <  calib, evaluation, train  <  actions  <  cli
"""

# action -> ("module:function", one-line summary); each function takes the loaded spec (DictConfig).
ACTIONS = {
    "train": ("changenet.actions.train:train",
              "Train a change segmentation or classification model (Lightning); resumes automatically."),
    "evaluate": ("changenet.actions.evaluate:evaluate",
                 "Metrics of a checkpoint, ONNX model or TensorRT engine (segment: OA, mIoU, mF1, per class; "
                 "classify: accuracy, false alarm and miss rates, ROC/PR sweep)."),
    "inference": ("changenet.actions.inference:inference",
                  "Change masks (segment) or defect scores (classify, inference.csv) with pictures."),
    "export": ("changenet.actions.export:export", "Export a checkpoint to ONNX, verified against PyTorch."),
    "calibrate": ("changenet.actions.calibrate:calibrate",
                  "INT8 calibration over image pairs: Q/DQ ONNX and TensorRT cache."),
    "gen_trt_engine": ("changenet.actions.gen_trt_engine:gen_trt_engine",
                       "Build a FP32/FP16/INT8 TensorRT engine from an ONNX model."),
    "benchmark": ("changenet.actions.benchmark:benchmark", "Measure throughput and latency of the chosen backends."),
    "model_repository": ("changenet.actions.model_repository:model_repository",
                         "Write a Triton model repository for an engine, ONNX model or OpenVINO IR."),
}
