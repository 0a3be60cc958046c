"""INT8 calibration from image pairs: calibration data (data), TensorRT calibration cache (cache),
Q/DQ placement per target (qdq), the `changenet calibrate` action and `build_int8_onnx` (calibrate),
and the FP32-vs-INT8 accuracy report (report)."""
