"""Host-side logic every backend shares: batch chunking/padding, shape checks, multi-scale scores."""

import numpy as np
import pytest
import torch

from changenet.deploy.predictor import Predictor, combine_multi_scale
from changenet.errors import ModelError
from changenet.model.options import ModelOptions


class RecordingPredictor(Predictor):
    """Outputs depend on the input values, so stitched batches can be checked item by item."""

    backend = "test"

    def __init__(self, **kwargs):
        super().__init__(num_classes=2, **kwargs)
        self.calls = []

    def _forward(self, a, b):
        self.calls.append(a.shape[0])
        if self.fixed_batch_size:
            assert a.shape[0] == self.fixed_batch_size
        h, w = a.shape[-2:]
        mean = (a - b).mean(axis=(1, 2, 3))[:, None, None, None]
        final = np.concatenate([np.broadcast_to(mean, (a.shape[0], 1, h, w)),
                                np.broadcast_to(-mean, (a.shape[0], 1, h, w))], axis=1)
        coarse = [final[:, :, ::s, ::s] for s in (4, 4, 2, 1)]
        return coarse + [final.copy()]


def _pairs(n, size=8):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3, size, size)).astype(np.float32), rng.normal(size=(n, 3, size, size)).astype(np.float32)


def test_batch_plan_fixed_and_max():
    fixed = RecordingPredictor(fixed_batch_size=4)
    assert fixed.batch_plan(10) == [(0, 4, 4), (4, 8, 4), (8, 10, 4)]
    capped = RecordingPredictor(max_batch_size=3)
    assert capped.batch_plan(7) == [(0, 3, 3), (3, 6, 3), (6, 7, 1)]
    assert RecordingPredictor().batch_plan(5) == [(0, 5, 5)]
    # an engine profile whose smallest batch is 2: short chunks are padded up to it
    profile = RecordingPredictor(max_batch_size=4, min_batch_size=2)
    assert profile.batch_plan(9) == [(0, 4, 4), (4, 8, 4), (8, 9, 2)]


@pytest.mark.parametrize("kwargs", [{"fixed_batch_size": 4}, {"max_batch_size": 3}, {}])
def test_chunked_results_equal_one_pass(kwargs):
    a, b = _pairs(10)
    reference = RecordingPredictor().predict_scores(a, b)
    predictor = RecordingPredictor(**kwargs)
    np.testing.assert_allclose(predictor.predict_scores(a, b), reference)
    assert sum(1 for _ in predictor.calls) == len(predictor.batch_plan(10))


def test_shape_checks():
    predictor = RecordingPredictor(input_size=(8, 8))
    a, b = _pairs(2, size=16)
    with pytest.raises(ModelError, match=r"8x8 inputs but the data is 16x16.*img_size=8"):
        predictor.predict(a, b)
    with pytest.raises(ModelError, match="shapes differ"):
        predictor.predict(*_pairs(2)[:1], _pairs(3)[0])


def test_class_count_mismatch_is_reported():
    predictor = RecordingPredictor()
    predictor.num_classes = 3
    with pytest.raises(ModelError, match="predicts 2 classes.*num_classes=3"):
        predictor.predict(*_pairs(1))


def test_multi_scale_combine_averages_probabilities():
    final = torch.zeros(1, 2, 4, 4)
    final[:, 1] = 10.0  # confident "change"
    coarse = torch.zeros(1, 2, 2, 2)
    coarse[:, 0] = 10.0  # confident "no change"
    probs = combine_multi_scale([coarse, coarse, coarse, coarse, final])
    assert probs.shape == (1, 2, 4, 4)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, 4, 4))
    assert float(probs[0, 0, 0, 0]) > 0.75  # four of five outputs say "no change"


# --------------------------------------------------------------------------- CUDA graphs (PyTorch)
def _tiny_changenet():
    from changenet.config import load_spec
    from changenet.model import build_model

    torch.manual_seed(0)
    cfg = load_spec(None, ["model.backbone.type=fan_tiny_8_p4_hybrid", "dataset.segment.img_size=32",
                           "model.decode_head.decoder_params.embed_dim=16"])
    return build_model(ModelOptions.from_spec(cfg), load_pretrained=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_graphs_need_a_gpu():
    from changenet.deploy.torch_predictor import TorchPredictor
    from changenet.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match="CUDA graphs need an NVIDIA GPU; this predictor runs on cpu"):
        TorchPredictor(_tiny_changenet(), 2, cuda_graphs=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need an NVIDIA GPU (none on this machine)")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_replays_match_eager_runs(precision):
    from changenet.deploy.torch_predictor import TorchPredictor

    model = _tiny_changenet()
    eager = TorchPredictor(model, 2, device="cuda", precision=precision)
    graphed = TorchPredictor(model, 2, device="cuda", precision=precision, cuda_graphs=True)
    rng = np.random.default_rng(0)
    for batch in (2, 2, 3):  # a replay with new data, then a second captured shape
        a, b = (rng.standard_normal((batch, 3, 32, 32), dtype=np.float32) for _ in range(2))
        for want, got in zip(eager.forward_all(a, b), graphed.forward_all(a, b)):
            np.testing.assert_allclose(got, want, atol=1e-2 if precision == "bf16" else 1e-4)
    assert len(graphed._captured) == 2
