"""The experiment spec: one typed schema for every action, TAO Visual ChangeNet field names.

Defaults follow the tables of the TAO documentation, with the exceptions noted on the field.
"???" (omegaconf.MISSING) marks a value that is required, but only by the action that reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


def _f(default: Any = MISSING, help: str = "", factory: Any = None) -> Any:  # noqa: A002 - "help" reads best
    """A dataclass field with its help text (shown by `changenet <action> --help`)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


BACKBONE_TYPES = (
    "fan_tiny_8_p4_hybrid",
    "fan_small_12_p4_hybrid",
    "fan_base_16_p4_hybrid",
    "fan_large_16_p4_hybrid",
    "vit_large_nvdinov2",
    "c_radio_p1_vit_huge_patch16_224_mlpnorm",
    "c_radio_p2_vit_huge_patch16_224_mlpnorm",
    "c_radio_p3_vit_huge_patch16_224_mlpnorm",
    "c_radio_v2_vit_huge_patch16_224",
    "c_radio_v2_vit_large_patch16_224",
    "c_radio_v2_vit_base_patch16_224",
)


# --------------------------------------------------------------------------- model
@dataclass
class BackboneConfig:
    type: str = _f("fan_small_12_p4_hybrid", f"backbone name, one of: {', '.join(BACKBONE_TYPES)}")
    pretrained_backbone_path: Optional[str] = _f(None, "backbone weights (.pth) to start from")
    freeze_backbone: bool = _f(False, "freeze the backbone weights during training")
    feat_downsample: bool = _f(False, "FAN only: downsample the last feature map (stride 32)")


@dataclass
class DecoderParamsConfig:
    embed_dim: int = _f(256, "decoder embedding width D")


@dataclass
class DecodeHeadConfig:
    feature_strides: Optional[List[int]] = _f(None, "strides of the 4 levels (default: the backbone's; checked against it)")
    in_channels: Optional[List[int]] = _f(None, "channels of the 4 levels (default: the backbone's; checked against it)")
    in_index: List[int] = _f(factory=lambda: [0, 1, 2, 3], help="which backbone levels the decoder reads")
    align_corners: bool = _f(False, "resizing of predictions (multi-scale combine, back to the input size); TAO's decoder itself always uses false")
    # The TAO example spells it without the "s"; both are accepted and mean the same.
    align_corner: Optional[bool] = _f(None, "alias of align_corners")
    use_summary_token: bool = _f(False, "ViT backbones: add the summary token to the deepest level (no effect on FAN)")
    decoder_params: DecoderParamsConfig = _f(factory=DecoderParamsConfig, help="decoder width")


@dataclass
class ClassifyModelConfig:
    """TAO's classification heads (task classify)."""

    train_margin_euclid: float = _f(2.0, "euclidean head: margin of the contrastive loss")
    eval_margin: float = _f(
        2.0, "defect threshold on the score: a distance (euclidean) or a defect probability (learnable; "
        "a margin >= 1 there would flag nothing, so 0.5 is used and said)")
    embedding_vectors: int = _f(5, "euclidean head: width of the embedding whose distance is the score")
    embed_dec: int = _f(5, "learnable head: width of the classifier's hidden layers")
    learnable_difference_modules: int = _f(4, "learnable head: decoder levels fused before the classifier (1-4, coarsest first)")
    difference_module: Optional[str] = _f("euclidean", "learnable (decoder + classifier, ce loss) or euclidean (embedding distance, contrastive loss)")


@dataclass
class ModelConfig:
    backbone: BackboneConfig = _f(factory=BackboneConfig, help="backbone settings")
    decode_head: DecodeHeadConfig = _f(factory=DecodeHeadConfig, help="decoder settings")
    classify: ClassifyModelConfig = _f(factory=ClassifyModelConfig, help="classification heads (task classify)")
    precise_msda: bool = _f(False, "TAO: deterministic deformable attention; changenet's is always the PyTorch one")


# --------------------------------------------------------------------------- dataset
@dataclass
class RandomFlipConfig:
    vflip_probability: float = _f(0.5, "probability of a vertical flip")
    hflip_probability: float = _f(0.5, "probability of a horizontal flip")
    enable: bool = _f(True, "enable random flips")


@dataclass
class RandomRotateConfig:
    rotate_probability: float = _f(0.5, "probability of a rotation")
    # List[float] as in TAO, whose full default spec writes 90.0, 180.0, 270.0.
    angle_list: List[float] = _f(factory=lambda: [90.0, 180.0, 270.0],
                                 help="angles to choose from (degrees; multiples of 90 turn exactly, others leave empty corners)")
    enable: bool = _f(True, "enable random rotation")


@dataclass
class RandomColorConfig:
    brightness: float = _f(0.3, "maximum brightness change factor")
    contrast: float = _f(0.3, "maximum contrast change factor")
    saturation: float = _f(0.3, "maximum saturation change factor")
    hue: float = _f(0.3, "maximum hue change factor")
    enable: bool = _f(True, "enable colour jitter (drawn per image)")
    color_probability: float = _f(0.5, "probability of colour jitter")


@dataclass
class ScaleRandomCropConfig:
    scale_range: List[float] = _f(factory=lambda: [1.0, 1.2], help="range of the random rescale factor")
    enable: bool = _f(True, "random rescale then crop back to img_size")


@dataclass
class PairAugmentationConfig:
    """The augmentations both tasks share (segmentation and classification blocks add their own fields)."""

    random_flip: RandomFlipConfig = _f(factory=RandomFlipConfig, help="random flips")
    random_rotate: RandomRotateConfig = _f(factory=RandomRotateConfig, help="random rotations")
    random_color: RandomColorConfig = _f(factory=RandomColorConfig, help="colour jitter")
    with_scale_random_crop: ScaleRandomCropConfig = _f(factory=ScaleRandomCropConfig, help="scale + crop")
    with_random_crop: bool = _f(True, "random crop (padding marked 255 = ignore in the label)")
    with_random_blur: bool = _f(True, "random Gaussian blur (per image)")


@dataclass
class AugmentationConfig(PairAugmentationConfig):
    mean: List[float] = _f(factory=lambda: [0.5, 0.5, 0.5], help="mean subtracted after scaling to [0, 1]")
    std: List[float] = _f(factory=lambda: [0.5, 0.5, 0.5], help="std divided after scaling to [0, 1]")


@dataclass
class QuantCalibrationDatasetConfig:
    images_dir: str = _f("", "calibration pairs when calibration.cal_image_dir is empty (segment: a folder with A/ and B/; "
                         "classify: a folder with a CSV and its images)")


@dataclass
class SegmentDatasetConfig:
    dataset: str = _f("CNDataset", "dataloader; only CNDataset")
    root_dir: str = _f(MISSING, "dataset root holding A/, B/, label/, list/")
    data_name: str = _f("LEVIR-CD", "dataset identifier (LEVIR / LEVIR-CD, LandSCD, custom): picks the default class colours")
    label_transform: Optional[str] = _f("norm", "'norm' maps 0/255 labels to 0/1; 'None' (or null) keeps class indices")
    batch_size: int = _f(32, "samples per batch")
    workers: int = _f(2, "data loading worker processes")
    multi_scale_train: bool = _f(True, "weighted loss over all five decoder outputs")
    multi_scale_infer: bool = _f(False, "average the class probabilities of all outputs at inference")
    num_classes: int = _f(2, "number of classes (>= 2)")
    img_size: int = _f(256, "image size after resizing")
    image_folder_name: str = _f("A", "folder of the 'before' images")
    change_image_folder_name: str = _f("B", "folder of the 'after' images")
    list_folder_name: str = _f("list", "folder of the split lists")
    annotation_folder_name: str = _f("label", "folder of the change masks")
    train_split: str = _f("train", "training split (list file name)")
    validation_split: str = _f("val", "validation split")
    test_split: str = _f("test", "evaluation split")
    predict_split: str = _f("predict", "inference split (no labels needed)")
    label_suffix: str = _f(".png", "suffix of the label files")
    augmentation: AugmentationConfig = _f(factory=AugmentationConfig, help="training augmentation")
    color_map: Optional[Dict[str, List[int]]] = _f(None, "class index ('0'..'n') -> RGB colour")
    class_names: Optional[List[str]] = _f(None, "class names for reports (default: class_0, ...)")
    shuffle: bool = _f(True, "shuffle the training pairs every epoch")
    bands: Optional[List[int]] = _f(None, "bands read as R, G, B, 1-based, from multi-band chips (default the first three)")
    stretch: str = _f("auto", "to 8 bits: auto (percentile unless 8-bit), percentile or none; limits stored in <root_dir>/changenet_stretch.json")
    percentiles: List[float] = _f(factory=lambda: [2.0, 98.0], help="low/high percentiles of the stretch")
    quant_calibration_dataset: QuantCalibrationDatasetConfig = _f(
        factory=QuantCalibrationDatasetConfig, help="INT8 calibration images")


@dataclass
class DataPathConfig:
    csv_path: str = _f("", "CSV listing the pairs")
    images_dir: str = _f("", "folder the CSV's paths are relative to")


@dataclass
class ClassifyAugmentationConfig(PairAugmentationConfig):
    rgb_input_mean: List[float] = _f(factory=lambda: [0.485, 0.456, 0.406], help="mean (ImageNet)")
    rgb_input_std: List[float] = _f(factory=lambda: [0.229, 0.224, 0.225], help="std (ImageNet)")
    augment: bool = _f(False, "enable the augmentations above (training only; one draw shared by all images of an object)")


@dataclass
class ClassifyDatasetConfig:
    """TAO's optical-inspection data (task classify): CSVs of objects, each a test and a golden image."""

    train_dataset: DataPathConfig = _f(factory=DataPathConfig, help="training CSV and images")
    validation_dataset: DataPathConfig = _f(factory=DataPathConfig, help="validation CSV and images")
    test_dataset: DataPathConfig = _f(factory=DataPathConfig, help="evaluation CSV and images")
    infer_dataset: DataPathConfig = _f(factory=DataPathConfig, help="inference CSV and images (label column optional)")
    image_ext: Optional[str] = _f(None, "image file extension, e.g. .jpg (required)")
    batch_size: int = _f(8, "objects per batch (training needs >= 2: the heads hold BatchNorm1d)")
    workers: int = _f(8, "data loading worker processes")
    fpratio_sampling: float = _f(0.1, "training draws defects with weight (#pass / #defect) x this (0.1: ~9% of draws)")
    num_input: int = _f(8, "lighting conditions per object (must match input_map when it is set)")
    input_map: Optional[Dict[str, int]] = _f(None, "lighting condition (file-name suffix) -> position in the joined input")
    grid_map: Optional[Dict[str, int]] = _f(None, "concat_type grid: x tiles per row, y rows")
    concat_type: Optional[str] = _f(None, "joining the lighting conditions: linear (stacked along the height) or grid")
    image_width: int = _f(224, "width of one lighting condition's image after resizing")
    image_height: int = _f(224, "height of one lighting condition's image after resizing")
    augmentation_config: ClassifyAugmentationConfig = _f(factory=ClassifyAugmentationConfig, help="augmentation")
    num_classes: int = _f(2, "classes of the learnable head's output (PASS and defect)")
    num_golden: int = _f(1, "golden images per test image (> 1: learnable ViT heads only, as in TAO)")
    quant_calibration_dataset: QuantCalibrationDatasetConfig = _f(
        factory=QuantCalibrationDatasetConfig, help="INT8 calibration: a folder holding a CSV and its images")


@dataclass
class DatasetConfig:
    segment: SegmentDatasetConfig = _f(factory=SegmentDatasetConfig, help="segmentation dataset")
    classify: ClassifyDatasetConfig = _f(factory=ClassifyDatasetConfig, help="classification dataset (task classify)")


# --------------------------------------------------------------------------- train
@dataclass
class SegmentLossConfig:
    loss: str = _f("ce", "loss function; only 'ce' (cross-entropy, ignore index 255)")
    weights: List[float] = _f(factory=lambda: [0.5, 0.5, 0.5, 0.8, 1.0], help="weights of the 5 outputs")


@dataclass
class ClassifyLossConfig:
    loss: str = _f("contrastive", "ce (learnable head) or contrastive (euclidean head)")
    cls_weight: List[float] = _f(factory=lambda: [1.0, 10.0], help="ce loss weights of PASS and defect")


@dataclass
class CudnnConfig:
    benchmark: bool = _f(False, "cuDNN autotuning (GPU)")
    deterministic: bool = _f(True, "deterministic cuDNN kernels (GPU)")


@dataclass
class CheckpointerConfig:
    enable_topk: bool = _f(False, "also keep the best checkpoints by a monitored metric")
    replace_periodic: bool = _f(False, "keep the best checkpoints instead of the periodic ones (the latest is always kept)")
    monitor: Optional[str] = _f(None, "metric to rank checkpoints by (default val_miou / val_total_accuracy)")
    mode: Optional[str] = _f(None, "min or max (default: min for losses and rates, else max)")
    save_top_k: int = _f(1, "how many best checkpoints to keep")
    filename: str = _f("model_best_{epoch:03d}", "file name pattern of the best checkpoints")
    dirpath: Optional[str] = _f(None, "folder of the best checkpoints (default train.results_dir)")
    auto_insert_metric_name: bool = _f(False, "put the metric name in the file name")


@dataclass
class TensorBoardConfig:
    enabled: bool = _f(False, "write TensorBoard logs")
    infrequent_logging_frequency: int = _f(2, "epochs between image logs")


@dataclass
class OptimConfig:
    monitor_name: str = _f("val_loss", "TAO's monitored metric name (no effect in TAO's segmentation either)")
    lr: float = _f(0.0005, "learning rate")
    optim: str = _f("adamw", "optimizer: adamw, adam or sgd")
    policy: str = _f("linear", "lr schedule: linear or step")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(0.1, "weight decay")
    betas: List[float] = _f(factory=lambda: [0.9, 0.999], help="AdamW betas")


@dataclass
class TrainConfig:
    num_gpus: int = _f(1, "number of GPUs")
    gpu_ids: List[int] = _f(factory=lambda: [0], help="GPU indices")
    num_nodes: int = _f(1, "number of nodes")
    seed: int = _f(1234, "random seed (random, numpy, torch)")
    cudnn: CudnnConfig = _f(factory=CudnnConfig, help="cuDNN settings")
    num_epochs: int = _f(10, "total epochs")
    checkpoint_interval: int = _f(1, "save model_epoch_<NNN>.pth every N epochs")
    checkpoint_interval_unit: str = _f("epoch", "unit of checkpoint_interval: epoch or step (model_epoch_<NNN>_step_<NNNNN>.pth)")
    validation_interval: int = _f(1, "validate every N epochs")
    checkpointer: CheckpointerConfig = _f(factory=CheckpointerConfig, help="best-checkpoint selection")
    resume_training_checkpoint_path: Optional[str] = _f(None, "checkpoint to resume from (else the latest)")
    pretrained_model_path: Optional[str] = _f(None, "whole-model weights to start from")
    results_dir: Optional[str] = _f(None, "training outputs (default <results_dir>/train)")
    classify: ClassifyLossConfig = _f(factory=ClassifyLossConfig, help="classification loss (task classify)")
    segment: SegmentLossConfig = _f(factory=SegmentLossConfig, help="loss settings")
    optim: OptimConfig = _f(factory=OptimConfig, help="optimizer settings")
    tensorboard: TensorBoardConfig = _f(factory=TensorBoardConfig, help="TensorBoard logging")
    precision: str = _f("32-true", "Lightning precision: 32-true, bf16-mixed or 16-mixed")
    sync_batchnorm: bool = _f(False, "synchronise BatchNorm statistics across GPUs")
    use_distributed_sampler: bool = _f(False, "true: Lightning's samplers shard the data; false: changenet's (every split, exact validation)")
    accelerator: str = _f("auto", "auto (GPUs when present, else one CPU process), gpu, or cpu: num_gpus / gpu_ids processes on the CPU (DDP over gloo)")
    max_steps_per_epoch: Optional[int] = _f(None, "cap on training batches per epoch (quick runs)")


# --------------------------------------------------------------------------- evaluate / inference
@dataclass
class TilingConfig:
    enable: bool = _f(False, "sliding-window inference over images larger than the model input")
    tile_size: Optional[int] = _f(None, "window size (default img_size)")
    overlap: Optional[int] = _f(None, "window overlap in pixels (default tile_size // 8)")
    batch_size: int = _f(8, "windows per model call")
    bands: Optional[List[int]] = _f(None, "GeoTIFF bands to read as R, G, B, 1-based (default dataset.segment.bands, else the first three)")
    stretch: str = _f("auto", "to 8 bits: auto (percentile unless uint8), percentile or none")
    percentiles: List[float] = _f(factory=lambda: [2.0, 98.0], help="low/high percentiles of the stretch")


@dataclass
class EvaluateConfig:
    checkpoint: Optional[str] = _f(None, "PyTorch checkpoint to evaluate")
    onnx_file: Optional[str] = _f(None, "ONNX model to evaluate (run by onnx_runtime)")
    onnx_runtime: str = _f("onnxruntime", "what runs onnx_file: onnxruntime or openvino (CPU; settings in openvino.*)")
    trt_engine: Optional[str] = _f(None, "TensorRT engine to evaluate")
    num_gpus: int = _f(1, "number of GPUs")
    gpu_ids: List[int] = _f(factory=lambda: [0], help="GPU indices")
    num_nodes: int = _f(1, "number of nodes")
    results_dir: Optional[str] = _f(None, "outputs (default <results_dir>/evaluate)")
    vis_after_n_batches: int = _f(1, "write visualisations every N batches")
    batch_size: Optional[int] = _f(None, "batch size (default, or -1: the dataset block's batch_size)")
    target_miss_rate: float = _f(0.01, "classify: the threshold sweep reports the highest threshold missing at most this share of defects")


@dataclass
class InferenceConfig(EvaluateConfig):
    results_dir: Optional[str] = _f(None, "outputs (default <results_dir>/inference)")
    fail_fast: bool = _f(False, "stop at the first bad pair (default: skip it with a warning, list it, exit with code 3)")
    tiling: TilingConfig = _f(factory=TilingConfig, help="sliding-window inference for large scenes")


# --------------------------------------------------------------------------- export
@dataclass
class ExportConfig:
    checkpoint: str = _f(MISSING, "PyTorch checkpoint to export")
    onnx_file: str = _f(MISSING, "ONNX file to write")
    opset_version: int = _f(17, "ONNX opset (17 keeps LayerNormalization as one op; >= 12)")
    input_channel: int = _f(3, "input channels; only 3")
    # TAO's table gives 128 x 512; an export that silently differs from the training size helps no one,
    # so an unset size follows the data (task.input_size).
    input_width: Optional[int] = _f(None, "input width (default: the data's, dataset.segment.img_size or the joined tiles)")
    input_height: Optional[int] = _f(None, "input height (default: the data's, dataset.segment.img_size or the joined tiles)")
    batch_size: int = _f(-1, "batch size; -1 = dynamic batch axis")
    gpu_id: int = _f(0, "GPU to export on")
    on_cpu: bool = _f(False, "export on the CPU")
    verbose: bool = _f(False, "print a summary of the exported graph")
    split_transposed_conv: bool = _f(
        True, "export transposed convs as phase convs (same output; ONNX Runtime runs them faster and in int8)")
    deformable_attention: str = _f(
        "grid_sample", "ViT-Adapter backbones: grid_sample (runs everywhere) or tensorrt_plugin (TensorRT's MSDA plugin, GPU only)")
    format: str = _f("onnx", "file format; only onnx")
    serialize_nvdsinfer: bool = _f(False, "TAO: write DeepStream nvinfer configs (not written by changenet)")
    results_dir: Optional[str] = _f(None, "outputs (default <results_dir>/export)")


# --------------------------------------------------------------------------- TensorRT (TAO deploy block)
@dataclass
class CalibrationConfig:
    cal_image_dir: List[str] = _f(factory=list, help="folders of pairs (segment: A/B sub-folders; classify: a CSV and "
                                  "its images); default: the training data")
    cal_cache_file: Optional[str] = _f(None, "TensorRT calibration cache to write / reuse (default <calibrate.results_dir>/cal.cache)")
    cal_batch_size: int = _f(1, "pairs per calibration batch")
    cal_batches: int = _f(1, "number of calibration batches")


@dataclass
class TensorRTConfig:
    data_type: str = _f("FP32", "engine precision: FP32, FP16 or INT8")
    workspace_size: int = _f(1024, "builder workspace (MB)")
    min_batch_size: int = _f(1, "optimisation profile: smallest batch")
    opt_batch_size: int = _f(1, "optimisation profile: batch tuned for")
    max_batch_size: int = _f(1, "optimisation profile: largest batch")
    layers_precision: List[str] = _f(factory=list, help="'layer_or_op:fp32' entries kept in higher precision")
    compute_capabilities: Optional[List[int]] = _f(None, "TensorRT-RTX targets (default: GPU present, else 86 89 120)")
    builder: str = _f("auto", "auto, tensorrt or tensorrt_rtx")
    calibration: CalibrationConfig = _f(factory=CalibrationConfig, help="INT8 calibration data")


@dataclass
class GenTrtEngineConfig:
    onnx_file: str = _f(MISSING, "ONNX model to build from")
    trt_engine: Optional[str] = _f(None, "engine file to write (default <results_dir>/gen_trt_engine/model.engine)")
    batch_size: int = _f(-1, "batch size; -1 = use the profile")
    timing_cache: Optional[str] = _f(None, "timing cache: read if present, written after the build")
    verbose: bool = _f(False, "verbose builder log")
    gpu_id: int = _f(0, "GPU to build on")
    results_dir: Optional[str] = _f(None, "outputs (default <results_dir>/gen_trt_engine)")
    tensorrt: TensorRTConfig = _f(factory=TensorRTConfig, help="TensorRT settings")


@dataclass
class CalibrateConfig:
    onnx_file: Optional[str] = _f(None, "FP32 ONNX to calibrate (default gen_trt_engine.onnx_file)")
    target: str = _f("tensorrt", "Q/DQ placement: tensorrt (ModelOpt), onnxruntime, or openvino (NNCF)")
    method: str = _f("entropy", "activation ranges: entropy, max (= minmax) or percentile")
    output_onnx: Optional[str] = _f(None, "Q/DQ ONNX to write (default <results_dir>/calibrate/model.<target>.int8.onnx)")
    exclude_op_types: List[str] = _f(factory=list, help="op types kept in higher precision")
    exclude_nodes: List[str] = _f(factory=list, help="node names kept in higher precision")
    report: bool = _f(True, "compare FP32 and INT8 on the validation split after calibrating")
    results_dir: Optional[str] = _f(None, "outputs (default <results_dir>/calibrate)")
    seed: int = _f(0, "seed of the draw of calibration pairs (repeatable calibrations)")
    high_precision_dtype: str = _f("fp16", "tensorrt target: precision of the layers left out of INT8 (fp16 or fp32)")
    keep_deformable_sampling: bool = _f(
        False, "ViT-Adapters: keep the projections giving deformable attention's sampling offsets and weights out of INT8")


# --------------------------------------------------------------------------- OpenVINO
@dataclass
class OpenVinoConfig:
    precision: str = _f("auto", "inference precision on the CPU: auto (OpenVINO's choice: bf16 where the CPU has it), f32 or bf16")
    performance_hint: str = _f("latency", "latency (one request at a time) or throughput (several streams, batch inference)")
    cache_dir: Optional[str] = _f(None, "compiled-model cache (default ~/.cache/changenet/openvino)")


# --------------------------------------------------------------------------- benchmark
@dataclass
class BenchmarkConfig:
    backends: List[str] = _f(
        factory=lambda: ["torch", "onnxruntime"],
        help="torch, torch-bf16, torch-cudagraph, torch-bf16-cudagraph, onnxruntime, onnxruntime-int8, openvino "
             "(openvino.precision), openvino-f32, openvino-bf16, openvino-int8, tensorrt")
    batch_sizes: List[int] = _f(factory=lambda: [1, 8], help="batch sizes to time")
    warmup: int = _f(3, "untimed iterations")
    iterations: int = _f(20, "timed iterations")
    checkpoint: Optional[str] = _f(None, "PyTorch checkpoint (torch backend)")
    onnx_file: Optional[str] = _f(None, "FP32 ONNX (onnxruntime backend)")
    int8_onnx_file: Optional[str] = _f(None, "INT8 ONNX (onnxruntime-int8 backend)")
    openvino_int8_onnx_file: Optional[str] = _f(None, "INT8 ONNX of calibrate.target=openvino (openvino-int8 backend)")
    trt_engine: Optional[str] = _f(None, "engine (tensorrt backend)")
    end_to_end: bool = _f(False, "time the whole inference path over a folder of images")
    profile: bool = _f(False, "also write per-layer profiles (profile.json, profile.png): time by layer and precision")
    peak_tflops: Optional[float] = _f(None, "machine peak for utilisation (default: estimated)")
    results_dir: Optional[str] = _f(None, "outputs (default <results_dir>/benchmark)")


# --------------------------------------------------------------------------- serving
@dataclass
class ModelRepositoryConfig:
    trt_engine: Optional[str] = _f(None, "TensorRT engine to serve (Triton's tensorrt_plan)")
    onnx_file: Optional[str] = _f(None, "ONNX model to serve (Triton's onnxruntime_onnx)")
    openvino_model: Optional[str] = _f(None, "OpenVINO IR (.xml) to serve, e.g. calibrate.target=openvino's (Triton's openvino backend)")
    path: Optional[str] = _f(None, "the Triton model repository to write (default <results_dir>/model_repository)")
    model_name: str = _f("changenet", "model name in the repository and in requests")
    max_batch_size: Optional[int] = _f(None, "largest batch Triton sends (default: the engine profile's max, else 8); 0: no batching")
    instance_count: int = _f(1, "model instances Triton runs side by side")
    max_queue_delay_ms: float = _f(1.0, "dynamic batching: how long a request may wait for others (ms)")
    results_dir: Optional[str] = _f(None, "outputs (default <results_dir>/model_repository)")


# --------------------------------------------------------------------------- TAO blocks without a role here
@dataclass
class WandbConfig:
    enable: bool = _f(True, "TAO: log to Weights & Biases (changenet writes status.json instead)")
    project: str = _f("TAO Toolkit", "W&B project")
    entity: Optional[str] = _f("", "W&B entity")
    group: Optional[str] = _f("", "W&B group")
    tags: List[str] = _f(factory=lambda: ["training", "tao-toolkit"], help="W&B tags")
    reinit: bool = _f(False, "W&B reinit")
    sync_tensorboard: bool = _f(False, "W&B TensorBoard sync")
    save_code: bool = _f(False, "W&B save code")
    name: str = _f("TAO Toolkit training experiment", "W&B run name")
    run_id: str = _f("", "W&B run id")


@dataclass
class QuantizeConfig:
    """TAO 7's PyTorch-side quantization (torchao / ModelOpt); changenet quantizes with `calibrate`."""

    backend: Optional[str] = _f("torchao", "modelopt.pytorch, torchao or modelopt.onnx")
    mode: Optional[str] = _f("weight_only_ptq", "static_ptq or weight_only_ptq")
    algorithm: Optional[str] = _f("minmax", "calibration algorithm")
    layers: Optional[List[Any]] = _f(factory=list, help="per-module quantization settings")
    skip_names: Optional[List[str]] = _f(factory=list, help="modules left out")
    model_path: Optional[str] = _f("", "model to quantize")
    results_dir: Optional[str] = _f("", "outputs")
    backend_kwargs: Optional[Dict[str, Any]] = _f(factory=dict, help="backend options")
    device: str = _f("cuda", "calibration device")


# --------------------------------------------------------------------------- the whole spec
@dataclass
class ExperimentConfig:
    model_name: Optional[str] = _f(None, "TAO's model name for model-agnostic launchers")
    encryption_key: Optional[str] = _f(None, "TAO model encryption key (accepted; changenet never encrypts)")
    task: str = _f("segment", "segment (change masks of image pairs) or classify (defect / no defect of test vs golden)")
    results_dir: str = _f("/results", "where every action writes its outputs")
    wandb: WandbConfig = _f(factory=WandbConfig, help="Weights & Biases (TAO)")
    model: ModelConfig = _f(factory=ModelConfig, help="model")
    dataset: DatasetConfig = _f(factory=DatasetConfig, help="dataset")
    train: TrainConfig = _f(factory=TrainConfig, help="training")
    evaluate: EvaluateConfig = _f(factory=EvaluateConfig, help="evaluation")
    inference: InferenceConfig = _f(factory=InferenceConfig, help="inference")
    export: ExportConfig = _f(factory=ExportConfig, help="ONNX export")
    calibrate: CalibrateConfig = _f(factory=CalibrateConfig, help="INT8 calibration")
    gen_trt_engine: GenTrtEngineConfig = _f(factory=GenTrtEngineConfig, help="TensorRT engine build")
    quantize: QuantizeConfig = _f(factory=QuantizeConfig, help="TAO 7 PyTorch quantization (see calibrate)")
    benchmark: BenchmarkConfig = _f(factory=BenchmarkConfig, help="throughput benchmark")
    model_repository: ModelRepositoryConfig = _f(factory=ModelRepositoryConfig, help="a Triton model repository to write")
    openvino: OpenVinoConfig = _f(factory=OpenVinoConfig, help="OpenVINO settings (onnx_runtime: openvino, openvino backends)")


# The choices of the spec's enumerated fields: validation (config/validate.py) and the code that acts on
# them import these, so a choice is spelled once.
DATA_TYPES = ("FP32", "FP16", "INT8")  # gen_trt_engine.tensorrt.data_type
BUILDER_FLAVOURS = ("tensorrt", "tensorrt_rtx")  # gen_trt_engine.tensorrt.builder (and "auto")
CALIBRATION_TARGETS = ("tensorrt", "onnxruntime", "openvino")  # calibrate.target
ONNX_RUNTIMES = ("onnxruntime", "openvino")  # evaluate/inference.onnx_runtime
OPENVINO_PRECISIONS = ("auto", "f32", "bf16")  # openvino.precision
OPENVINO_HINTS = ("latency", "throughput")  # openvino.performance_hint
# benchmark.backends: each name -> the benchmark.* key naming the model it runs (PyTorch: an untrained model
# of the spec when benchmark.checkpoint is unset).
BENCHMARK_MODEL_KEYS = {
    "torch": "checkpoint", "torch-bf16": "checkpoint", "torch-cudagraph": "checkpoint", "torch-bf16-cudagraph": "checkpoint",
    "onnxruntime": "onnx_file", "onnxruntime-int8": "int8_onnx_file",
    "openvino": "onnx_file", "openvino-f32": "onnx_file", "openvino-bf16": "onnx_file",
    "openvino-int8": "openvino_int8_onnx_file", "tensorrt": "trt_engine",
}
BENCHMARK_BACKENDS = tuple(BENCHMARK_MODEL_KEYS)

# Where evaluate/inference/benchmark find their model: spec field -> backend that runs it.
MODEL_SOURCES = {"checkpoint": "torch", "onnx_file": "onnxruntime", "trt_engine": "tensorrt"}
MODEL_SOURCE_KEYS = tuple(MODEL_SOURCES)
MODEL_SOURCE_BLOCKS = ("evaluate", "inference")

ACTIONS = ("train", "evaluate", "inference", "export", "calibrate", "gen_trt_engine", "benchmark", "model_repository")
