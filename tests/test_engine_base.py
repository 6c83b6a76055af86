"""Engine behaviour: scoped hooks, gradients only to the activation, targets, zero maps, precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradcam_cli.engine import METHODS, CamEngine, TargetSpec
from gradcam_cli.errors import ModelError
from tests.assets.tiny_models import build

GRADCAM = METHODS["gradcam"]


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


def _model() -> nn.Module:
    return build().eval().requires_grad_(False)


def test_hooks_are_removed_even_after_an_exception() -> None:
    model = _model()
    with pytest.raises(RuntimeError), CamEngine(model, [model.features[3]], GRADCAM) as engine:
        engine.explain(torch.randn(2, 5, 32, 32), TargetSpec())  # wrong channel count: forward fails
    assert _hook_count(model) == 0
    with CamEngine(model, [model.features[3]], GRADCAM) as engine:
        engine.explain(torch.randn(2, 3, 32, 32), TargetSpec())
        assert _hook_count(model) == 1
        assert engine._activations == {}  # nothing kept between batches
    assert _hook_count(model) == 0


def test_explain_outside_with_block_is_refused() -> None:
    model = _model()
    with pytest.raises(RuntimeError, match="inside"):
        CamEngine(model, [model.features[3]], GRADCAM).explain(torch.randn(1, 3, 32, 32), TargetSpec())


def test_no_gradient_reaches_parameters_or_earlier_layers() -> None:
    model = _model()
    early_backward_calls = []
    model.features[0].register_full_backward_hook(lambda *args: early_backward_calls.append(1))
    with CamEngine(model, [model.features[3]], GRADCAM) as engine:
        result = engine.explain(torch.randn(2, 3, 32, 32), TargetSpec())
    assert early_backward_calls == []  # no graph was built before the target layer
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert result.cams.shape == (2, 1, 32, 32)


def test_inplace_relu_after_target_layer_does_not_change_the_activation() -> None:
    """features.3 is a conv followed by ReLU(inplace=True): the CAM must use the pre-ReLU activation."""
    model = _model()
    images = torch.randn(2, 3, 32, 32)
    with CamEngine(model, [model.features[3]], METHODS["hirescam"]) as engine:
        ours = engine.explain(images, TargetSpec()).raw
    # By hand: activation of the conv, gradient of the top score through ReLU, pool and head.
    with torch.no_grad():
        activation = model.features[:4](images)
    leaf = activation.clone().requires_grad_(True)
    logits = model.head(torch.flatten(model.pool(torch.relu(leaf)), 1))
    top = logits.argmax(dim=1)
    (gradient,) = torch.autograd.grad(logits.gather(1, top[:, None]).sum(), leaf)
    expected = (gradient * activation).sum(dim=1).clamp(min=0)
    assert torch.allclose(ours[:, 0], expected, atol=1e-6)
    assert (activation < 0).any()  # the test means something only if the ReLU would have changed it


def test_topk_equals_separate_fixed_targets() -> None:
    model = _model()
    images = torch.randn(3, 3, 32, 32)
    with CamEngine(model, [model.features[3]], GRADCAM) as engine:
        topk = engine.explain(images, TargetSpec("topk", k=2))
        assert topk.class_indices.shape == (3, 2)
        ranked = topk.probabilities.argsort(dim=1, descending=True)[:, :2]
        assert torch.equal(topk.class_indices, ranked)
        for i in range(3):
            for rank in range(2):
                fixed = engine.explain(images[i : i + 1], TargetSpec("fixed", classes=(int(ranked[i, rank]),)))
                assert torch.allclose(fixed.cams[0, 0], topk.cams[i, rank], atol=1e-5)


def test_all_zero_cam_is_zero_and_flagged() -> None:
    model = _model()
    with torch.no_grad():
        model.head.weight.zero_()  # the scores no longer depend on the features: zero gradients
    with CamEngine(model, [model.features[3]], GRADCAM) as engine:
        result = engine.explain(torch.randn(2, 3, 32, 32), TargetSpec())
    assert torch.equal(result.cams, torch.zeros_like(result.cams))
    assert result.quality == [["empty"], ["empty"]]
    assert result.raw_max.tolist() == [[0.0], [0.0]]


def test_target_layers_in_any_order_stay_connected() -> None:
    """A later target layer must not cut the graph of an earlier one (both get gradients)."""
    model = _model()
    with CamEngine(model, [model.features[3], model.features[0]], GRADCAM) as engine:
        result = engine.explain(torch.randn(1, 3, 32, 32), TargetSpec())
    assert result.quality == [["ok"]]


def test_non_feature_map_layer_is_a_clear_error() -> None:
    model = _model()
    with pytest.raises(ModelError, match="feature map"), CamEngine(model, [model.head], GRADCAM) as engine:
        engine.explain(torch.randn(1, 3, 32, 32), TargetSpec())


@pytest.mark.skipif(not hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported"), reason="no bf16 probe")
def test_bf16_autocast_on_cpu_agrees_with_fp32() -> None:
    from tests.conftest import calibrated_random_model

    model = calibrated_random_model("resnet18").requires_grad_(False)
    images = torch.randn(2, 3, 128, 128)
    results = {}
    for precision in ("fp32", "bf16"):
        with CamEngine(model, [model.layer4], GRADCAM, precision=precision) as engine:
            results[precision] = engine.explain(images, TargetSpec("fixed", classes=(1,))).cams
    for i in range(2):
        a, b = results["fp32"][i].flatten(), results["bf16"][i].flatten()
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] >= 0.99


def test_slow_methods_show_progress_and_respect_the_chunk(capsys: pytest.CaptureFixture[str]) -> None:
    model = _model()
    rows = []
    original = CamEngine._score_inputs

    def counting(self, inputs, classes):
        rows.append(len(inputs))
        return original(self, inputs, classes)

    engine = CamEngine(model, [model.features[3]], METHODS["scorecam"], chunk=5)
    engine.show_progress = True
    engine._score_inputs = counting.__get__(engine)  # type: ignore[method-assign]
    with engine:
        engine.explain(torch.randn(1, 3, 32, 32), TargetSpec())
    assert max(rows) <= 5 and sum(rows) == 16  # 16 channels, at most 5 rows per extra pass
    assert "scorecam image 1/1" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam", "ablationcam", "eigencam"])
def test_a_module_called_several_times_is_explained_at_its_last_call(method: str) -> None:
    """A shared activation module (called at the stem, the middle and the head): every method explains its
    last call, exactly as if that call were a module of its own."""
    from gradcam_cli.engine import METHODS, CamEngine, TargetSpec
    from gradcam_cli.models import auto_layer, trace_layers
    from tests.assets.tiny_models import SharedActivation

    torch.manual_seed(0)
    shared = SharedActivation().eval()
    twin = SharedActivation(distinct_last=True).eval()
    twin.load_state_dict(shared.state_dict())
    for model in (shared, twin):
        model.requires_grad_(False)
    layers, _ = trace_layers(shared, torch.zeros(1, 3, 32, 32))
    calls = {info.name: info.calls for info in layers}
    assert calls["act"] == 3 and calls["conv3"] == 1
    assert auto_layer(layers) == "conv3"  # auto prefers a module that runs once
    images = torch.randn(3, 3, 32, 32)
    with CamEngine(shared, [shared.act], METHODS[method], calls=[3], chunk=4) as engine:
        found = engine.explain(images, TargetSpec("top1"))
    with CamEngine(twin, [twin.head_act], METHODS[method], chunk=4) as engine:
        expected = engine.explain(images, TargetSpec("top1"))
    assert torch.allclose(found.cams, expected.cams, atol=1e-5)
    assert torch.equal(found.class_indices, expected.class_indices)


def test_score_methods_compare_fp32_scores_under_bf16() -> None:
    """Score-CAM and Ablation-CAM weigh channels by small differences of large scores: their extra passes
    (and the base score they are compared with) run in fp32 even when the explained forward is bf16."""
    from gradcam_cli.engine import METHODS, CamEngine, TargetSpec
    from tests.assets.tiny_models import build

    model = build().eval().requires_grad_(False)
    dtypes: list[torch.dtype] = []
    model.head.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    images = torch.randn(2, 3, 32, 32)
    for method in ("ablationcam", "scorecam"):
        dtypes.clear()
        with CamEngine(model, [model.features[3]], METHODS[method], precision="bf16", chunk=8) as engine:
            half = engine.explain(images, TargetSpec("top1"))
        assert dtypes[0] == torch.bfloat16 and set(dtypes[1:]) == {torch.float32}
        with CamEngine(model, [model.features[3]], METHODS[method], chunk=8) as engine:
            full = engine.explain(images, TargetSpec("top1"))
        correlation = torch.corrcoef(torch.stack([half.cams.flatten(), full.cams.flatten()]))[0, 1]
        assert correlation > 0.99


def test_fp16_gradients_that_underflow_are_flagged_not_blank() -> None:
    from gradcam_cli.engine import METHODS, CamEngine, TargetSpec
    from gradcam_cli.engine.base import _quality

    flags = _quality(
        torch.tensor([[0.0, 1.0]]),
        torch.tensor([[0.0, 0.0]]),
        torch.tensor([[False, False]]),
        torch.tensor([[True, False]]),
    )
    assert flags == [["underflow", "ok"]]

    class Tiny(torch.nn.Module):  # scores so small that fp16 gradients vanish without scaling
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean(dim=(2, 3)) * 1e-30

    model = Tiny().eval().requires_grad_(False)
    try:
        with CamEngine(model, [model.conv], METHODS["gradcam"], precision="fp16") as engine:
            batch = engine.explain(torch.randn(2, 3, 8, 8), TargetSpec("top1"))
    except RuntimeError as exc:  # pragma: no cover - a CPU build without fp16 autocast
        pytest.skip(f"fp16 autocast unavailable on this CPU build: {exc}")
    assert {flag for row in batch.quality for flag in row} == {"underflow"}


def test_host_copies_a_batch_once_and_keeps_every_figure(monkeypatch) -> None:
    from gradcam_cli.engine.base import CamBatch

    generator = torch.Generator().manual_seed(0)
    batch = CamBatch(
        probabilities=torch.rand(3, 1000, generator=generator).softmax(1),
        class_indices=torch.tensor([[999, 0], [5, 6], [123, 4]]),
        cams=torch.rand(3, 2, 8, 8, generator=generator),
        raw_max=torch.tensor([[1.0, 0.0], [2.0, 2.0], [float("nan"), 1.0]]),
        raw=torch.rand(3, 2, 2, 2, generator=generator),
        raw_min=torch.tensor([[0.0, 0.0], [0.0, 2.0], [0.0, 0.0]]),
        nonfinite=torch.tensor([[False, False], [False, False], [True, False]]),
        underflow=torch.tensor([[False, False], [False, False], [False, True]]),
        metrics={"deletion": torch.rand(3, 2, generator=generator), "insertion": torch.rand(3, 2, generator=generator)},
    )
    copies = []
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: copies.append(self.shape) or real_cpu(self, *a, **k))
    host = batch.host(cams=True, raw=True)
    assert len(copies) == 1  # one device-to-host copy per batch
    assert torch.equal(torch.from_numpy(host.probabilities), batch.probabilities)
    assert host.class_indices.dtype == np.int64 and host.class_indices.tolist() == batch.class_indices.tolist()
    assert torch.equal(torch.from_numpy(host.cams), batch.cams) and torch.equal(torch.from_numpy(host.raw), batch.raw)
    assert host.quality == [["ok", "empty"], ["ok", "flat"], ["nonfinite", "underflow"]]
    assert batch.host(cams=False).cams is None and batch.host().raw is None
    assert host.metrics is not None and list(host.metrics) == ["deletion", "insertion"]
    assert all(torch.equal(torch.from_numpy(host.metrics[name]), batch.metrics[name]) for name in host.metrics)



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_host_copies_from_the_gpu_through_pinned_memory_and_equals_the_cpu_copy() -> None:
    from gradcam_cli.engine.base import _to_host

    values = torch.rand(3, 2, 8, 8)
    on_gpu = _to_host(values.cuda())
    assert np.array_equal(on_gpu, values.numpy()) and on_gpu.dtype == np.float32

# explain_each: several methods and layers from one pass (`gradcam sweep`) --------------------------------------
def _calibrated_model() -> nn.Module:
    """The tiny CNN with BatchNorm statistics from random inputs, so every method gives a shaped map."""
    model = build()
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32))
    return model.eval().requires_grad_(False)


def _forwards(model: nn.Module) -> list[int]:
    """Rows seen by every forward of `model` (a forward hook on the model itself)."""
    rows: list[int] = []
    model.register_forward_hook(lambda module, args, output: rows.append(len(args[0])))
    return rows


@pytest.mark.parametrize("targets", [TargetSpec("top1"), TargetSpec("topk", k=2)])
def test_explain_each_equals_each_method_and_layer_run_alone(targets: TargetSpec) -> None:
    model = _calibrated_model()
    layers = [model.features[0], model.features[3]]
    groups = [(0,), (1,), (0, 1)]
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    methods = list(METHODS.values())
    with CamEngine(model, layers, GRADCAM, chunk=5) as engine:
        shared = engine.explain_each(images, targets, methods, groups)
    assert set(shared) == {(method.name, group) for method in methods for group in groups}
    for (name, group), batch in shared.items():
        with CamEngine(model, [layers[i] for i in group], METHODS[name], chunk=5) as alone:
            expected = alone.explain(images, targets)
        torch.testing.assert_close(batch.class_indices, expected.class_indices)
        torch.testing.assert_close(batch.cams, expected.cams, atol=1e-6, rtol=0, msg=f"{name} on {group}")
        torch.testing.assert_close(batch.raw_max, expected.raw_max, atol=1e-6, rtol=1e-5)
        assert batch.quality == expected.quality
        assert float(batch.cams.amax()) > 0.99  # shaped maps, not a comparison of blanks


def test_explain_each_runs_one_forward_per_batch_for_every_gradient_method() -> None:
    model = _calibrated_model()
    rows = _forwards(model)
    gradient_methods = [method for method in METHODS.values() if method.needs_gradients or method.name == "eigencam"]
    with CamEngine(model, [model.features[0], model.features[3]], GRADCAM) as engine:
        for _ in range(2):  # two batches
            result = engine.explain_each(torch.randn(4, 3, 32, 32), TargetSpec("topk", k=2), gradient_methods)
    assert rows == [4, 4]  # one forward per batch, whatever the methods, layers and targets
    assert len(result) == 2 * len(gradient_methods)
    # the separate runs it replaces: one forward per method and layer
    rows.clear()
    for method in gradient_methods:
        for layer in (model.features[0], model.features[3]):
            with CamEngine(model, [layer], method) as alone:
                alone.explain(torch.randn(4, 3, 32, 32), TargetSpec("topk", k=2))
    assert len(rows) == 2 * len(gradient_methods)


def test_explain_each_smooths_and_scores_like_explain() -> None:
    from gradcam_cli.engine.metrics import MetricSettings

    model = _calibrated_model()
    rows = _forwards(model)
    settings = MetricSettings(("deletion", "insertion"), steps=4)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    methods = [METHODS["gradcam"], METHODS["layercam"]]
    with CamEngine(model, [model.features[3]], GRADCAM, aug_smooth=True) as engine:
        engine.explain_each(images, TargetSpec(), methods)
        assert rows == [2] * 6  # the plain pass and 5 augmentations, shared by both methods
        rows.clear()
        shared = engine.explain_each(images, TargetSpec(), methods, metrics=settings)
    assert sum(rows) == 6 * 2 + sum(batch.metric_passes for batch in shared.values())  # each counted once
    for method in methods:
        with CamEngine(model, [model.features[3]], method, aug_smooth=True, metrics=settings) as alone:
            expected = alone.explain(images, TargetSpec())
        batch = shared[(method.name, (0,))]
        torch.testing.assert_close(batch.cams, expected.cams, atol=1e-6, rtol=0)
        assert batch.metrics is not None and expected.metrics is not None
        for name in settings.names:
            torch.testing.assert_close(batch.metrics[name], expected.metrics[name], atol=1e-6, rtol=0)
        assert batch.metric_passes == expected.metric_passes == 2 * 2 * 4  # 2 images, 2 metrics, 4 steps


def test_restricted_engine_explains_its_layers_with_its_method() -> None:
    model = _calibrated_model()
    images = torch.randn(2, 3, 32, 32)
    engine = CamEngine(model, [model.features[0], model.features[3]], GRADCAM, chunk=7)
    alone = engine.restricted([1], METHODS["layercam"])
    assert alone.target_layers == [model.features[3]] and alone.method.name == "layercam" and alone.chunk == 7
    with alone:
        ours = alone.explain(images, TargetSpec())
    with CamEngine(model, [model.features[3]], METHODS["layercam"]) as reference:
        torch.testing.assert_close(ours.cams, reference.explain(images, TargetSpec()).cams, atol=0, rtol=0)
    assert _hook_count(model) == 0
