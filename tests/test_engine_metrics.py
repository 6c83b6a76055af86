"""Faithfulness metrics (engine/metrics.py) agree with the reference implementations on the same inputs.

References: torchcam 0.5 (deletion/insertion, average drop and increase in confidence), pytorch-grad-cam
1.5.7 (confidence change, ROAD), and a transcription of RISE's published CausalMetric (written here: RISE
is not a package). The inputs are the demo CNN (trained on generated shapes), images it never saw, and
the CAMs our engine computes for them; every reference scores the very same CAMs.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from gradcam_cli.config import load_config
from gradcam_cli.demo.shapes import generate_sample
from gradcam_cli.engine import METHODS, CamEngine, TargetSpec
from gradcam_cli.engine import metrics as M
from gradcam_cli.io.metric_summary import average_drop, increase_in_confidence
from gradcam_cli.models import load_model
from tests.conftest import REPO

TOLERANCE = 0.01  # per image, as issue 16 asks
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def demo() -> tuple[torch.nn.Module, torch.Tensor]:
    """The demo CNN and 6 generated 128x128 images (normalised as configs/demo.yaml)."""
    model = load_model(load_config(REPO / "configs" / "demo.yaml").model).module
    rng = np.random.default_rng(16)
    pixels = [torch.from_numpy(np.array(generate_sample(rng, 128, 128).image)) for _ in range(6)]
    images = torch.stack([(p.permute(2, 0, 1) / 255 - MEAN) / STD for p in pixels]).float()
    return model, images


@pytest.fixture(scope="module")
def explained(demo) -> tuple[torch.nn.Module, M.Explained]:
    """Our gradcam CAMs of the demo images, with the top class and its probability."""
    model, images = demo
    with CamEngine(model, [model.features], METHODS["gradcam"]) as engine:
        batch = engine.explain(images, TargetSpec("top1"))
    base = batch.probabilities.gather(1, batch.class_indices)
    return model, M.Explained.of(images, batch.cams, batch.class_indices, base)


def score_of(model: torch.nn.Module) -> M.CountedScore:
    def probabilities(inputs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(model(inputs), dim=1).gather(1, classes[:, None])[:, 0]

    return M.CountedScore(probabilities)


def untied(cams: torch.Tensor) -> torch.Tensor:
    """The same ranking with no ties (RISE sorts with numpy's unstable quicksort: ties in any order)."""
    flat = cams.flatten(1)
    jitter = torch.rand(flat.shape, generator=torch.Generator().manual_seed(3)) * 1e-4
    return (flat * (1 - 2e-4) + jitter).reshape(cams.shape)


# ------------------------------------------------------------------------------------ deletion / insertion
def test_rise_kernel_is_risés_gkern() -> None:
    """RISE's gkern(11, 5): scipy's gaussian_filter of a delta (its reflected tails included)."""
    ndimage = pytest.importorskip("scipy.ndimage")
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    expected = ndimage.gaussian_filter(delta, 5)
    np.testing.assert_allclose(M.rise_kernel().numpy(), expected, atol=1e-7)
    assert abs(float(M.rise_kernel().sum()) - 1) < 1e-6


class _GivenCams:
    """A torchcam CAM extractor that returns the CAMs we computed, so torchcam scores the same maps."""

    def __init__(self, model: torch.nn.Module, cams: torch.Tensor) -> None:
        self.model = model
        self.cams = cams

    def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):  # noqa: ANN001, ANN204
        return [self.cams]

    def fuse_cams(self, cams: list[torch.Tensor]) -> torch.Tensor:
        return cams[0]

    @contextmanager
    def _hooks_off(self):  # noqa: ANN202
        yield


@pytest.mark.parametrize("steps", [20, 7])
def test_deletion_and_insertion_agree_with_torchcam(explained, steps: int) -> None:
    """torchcam 0.5's DeletionInsertionMetric, once with zeros as its baseline (our deletion) and once with
    RISE's blur (our insertion): per image within 0.01 (in fact to float rounding)."""
    metrics = pytest.importorskip("torchcam.metrics")
    model, x = explained
    softmax = lambda logits: torch.softmax(logits, dim=-1)  # noqa: E731
    classes = x.classes.tolist()
    ours_deletion = M.deletion(score_of(model), x, steps=steps, chunk=16)
    ours_insertion = M.insertion(score_of(model), x, steps=steps, chunk=16)
    for i, image in enumerate(x.images):
        extractor = _GivenCams(model, x.cams[i : i + 1])
        zeros = metrics.DeletionInsertionMetric(extractor, softmax, steps=steps)
        zeros.update(image[None], class_idx=classes[i : i + 1])
        blur = metrics.DeletionInsertionMetric(extractor, softmax, steps=steps, baseline=M.blurred)
        blur.update(image[None], class_idx=classes[i : i + 1])
        assert abs(zeros.summary()["deletion_auc"] - float(ours_deletion[i])) < 1e-4
        assert abs(blur.summary()["insertion_auc"] - float(ours_insertion[i])) < 1e-4
    assert (ours_insertion > ours_deletion).float().mean() >= 0.5  # the demo model's maps mean something


def rise_causal_metric(
    model: torch.nn.Module, mode: str, step: int, substrate_fn, image: torch.Tensor, explanation: np.ndarray
) -> float:
    """RISE's evaluation.py (CausalMetric.single_run and auc), transcribed: the model ends in a softmax,
    `step` pixels change per iteration, the class is the top prediction, auc by equal-width trapezoids."""
    height, width = image.shape[-2:]
    hw = height * width
    with torch.no_grad():
        pred = torch.softmax(model(image), dim=1)
    c = int(pred.argmax(1)[0])
    n_steps = (hw + step - 1) // step
    if mode == "del":
        start, finish = image.clone(), substrate_fn(image)
    else:
        start, finish = substrate_fn(image), image.clone()
    scores = np.empty(n_steps + 1)
    salient_order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1), axis=-1)
    for i in range(n_steps + 1):
        with torch.no_grad():
            pred = torch.softmax(model(start), dim=1)
        scores[i] = float(pred[0, c])
        if i < n_steps:
            coords = salient_order[:, step * i : step * (i + 1)]
            start.numpy().reshape(1, 3, hw)[0, :, coords] = finish.numpy().reshape(1, 3, hw)[0, :, coords]
    return float((scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1))


def test_deletion_and_insertion_agree_with_rise_causal_metric(explained) -> None:
    """RISE's own protocol (zeros for deletion, `gkern(11, 5)` blur for insertion): 128x128 = 16 steps of
    1024 pixels, so RISE's equal-width auc and our trapezoid over the fraction perturbed coincide."""
    model, x = explained
    x = M.Explained(x.images, untied(x.cams), x.classes, x.base, x.owner)
    ours_deletion = M.deletion(score_of(model), x, steps=16)
    ours_insertion = M.insertion(score_of(model), x, steps=16)
    for i in range(len(x.classes)):
        image, cam = x.images[i : i + 1].clone(), x.cams[i].numpy()
        rise_del = rise_causal_metric(model, "del", 1024, torch.zeros_like, image.clone(), cam)
        rise_ins = rise_causal_metric(model, "ins", 1024, M.blurred, image.clone(), cam)
        assert abs(rise_del - float(ours_deletion[i])) < TOLERANCE, (i, rise_del, float(ours_deletion[i]))
        assert abs(rise_ins - float(ours_insertion[i])) < TOLERANCE, (i, rise_ins, float(ours_insertion[i]))


def test_step_counts_are_torchcams() -> None:
    assert M.step_counts(10, 4) == [0, 3, 6, 9, 10]
    assert M.step_counts(16384, 16) == list(range(0, 16385, 1024))
    assert M.step_counts(5, 20) == [0, 1, 2, 3, 4, 5]


# ------------------------------------------------------------------------------------ confidence change
def test_confidence_change_agrees_with_pytorch_grad_cam(explained) -> None:
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, x = explained
    expected = CamMultImageConfidenceChange()(
        x.images, x.cams.numpy(), [ClassifierOutputSoftmaxTarget(int(c)) for c in x.classes], model
    )
    ours = M.confidence_change(score_of(model), x, chunk=4)
    np.testing.assert_allclose(ours.numpy(), np.ravel(expected), atol=1e-5)


def test_average_drop_and_increase_agree_with_torchcam(explained) -> None:
    """torchcam 0.5's ClassificationMetric (the Grad-CAM++ paper's two numbers) on our CAMs."""
    metrics = pytest.importorskip("torchcam.metrics")
    model, x = explained
    reference = metrics.ClassificationMetric(_GivenCams(model, x.cams), lambda logits: torch.softmax(logits, dim=-1))
    reference.update(x.images, class_idx=x.classes.tolist())
    changes = M.confidence_change(score_of(model), x).tolist()
    summary = reference.summary()
    assert abs(average_drop(changes, x.base.tolist()) - summary["avg_drop"]) < 1e-5
    assert increase_in_confidence(changes) == pytest.approx(summary["conf_increase"])


# ------------------------------------------------------------------------------------ ROAD
def test_noisy_linear_imputation_solves_the_references_system() -> None:
    """Without noise, our batched solve and pytorch-grad-cam's spsolve give the same pixels."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    torch.manual_seed(0)
    image = torch.nn.functional.avg_pool2d(torch.randn(1, 3, 64, 48), 5, 1, 2)[0] * 3
    cam = torch.nn.functional.interpolate(torch.rand(1, 1, 5, 4), size=(64, 48), mode="bilinear")[0, 0]
    for fraction in (0.1, 0.5, 0.9):
        keep = cam < torch.quantile(cam, 1 - fraction)
        expected = NoisyLinearImputer(noise=0.0)(image, keep.float())
        ours = M.noisy_linear_imputation(image[None], keep[None])[0]
        assert float((ours - expected).abs().max()) < 5e-4  # the multigrid-preconditioned solve: 4e-5 to 2e-4
        assert torch.equal(ours[:, keep], image[:, keep])  # kept pixels untouched


@pytest.mark.parametrize("percentiles", [(20, 80), (50,)])
def test_road_agrees_with_pytorch_grad_cam(explained, percentiles: tuple[float, ...]) -> None:
    """ROADMostRelevantFirstAverage / ROADLeastRelevantFirstAverage with the softmax target. Both add random
    noise (0.01) to the imputed pixels: the agreement is within 0.01 per image, not to the last bit."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, x = explained
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in x.classes]
    torch.manual_seed(0)
    most = ROADMostRelevantFirstAverage(list(percentiles))(x.images, x.cams.numpy(), targets, model)
    least = ROADLeastRelevantFirstAverage(list(percentiles))(x.images, x.cams.numpy(), targets, model)
    ours_most = M.road_most(score_of(model), x, percentiles, chunk=5)
    ours_least = M.road_least(score_of(model), x, percentiles, chunk=5)
    assert np.abs(ours_most.numpy() - np.ravel(most)).max() < TOLERANCE, (ours_most, most)
    assert np.abs(ours_least.numpy() - np.ravel(least)).max() < TOLERANCE, (ours_least, least)


# ------------------------------------------------------------------------------------ all of them
def test_chunks_change_nothing_and_passes_are_counted(explained) -> None:
    model, x = explained
    settings = M.MetricSettings(names=M.METRIC_NAMES, steps=10, percentiles=(30, 70), chunk=64)
    whole = score_of(model)
    values = M.compute(whole, x, settings)
    small = score_of(model)
    chunked = M.compute(small, x, M.MetricSettings(M.METRIC_NAMES, 10, (30, 70), chunk=3))
    for name in M.METRIC_NAMES:
        np.testing.assert_allclose(values[name].numpy(), chunked[name].numpy(), atol=1e-5)
    per_cam = M.passes_per_cam(settings, 128 * 128)
    assert per_cam == {"deletion": 10, "insertion": 10, "confidence_change": 1, "road_most": 2, "road_least": 2}
    assert whole.passes == small.passes == sum(per_cam.values()) * len(x.classes)


def test_engine_computes_the_metrics_per_target(demo) -> None:
    """`cam.metrics` through the engine: (B, K) values for top-k targets, the passes counted, and the
    hooks leave no activations behind."""
    model, images = demo
    settings = M.MetricSettings(names=("deletion", "confidence_change"), steps=5)
    with CamEngine(model, [model.features], METHODS["gradcam"], metrics=settings) as engine:
        batch = engine.explain(images[:3], TargetSpec("topk", k=2))
        assert not engine._activations
    assert batch.metrics is not None and set(batch.metrics) == {"deletion", "confidence_change"}
    assert batch.metrics["deletion"].shape == (3, 2)
    assert batch.metric_passes == 3 * 2 * (5 + 1)
    base = batch.probabilities.gather(1, batch.class_indices)
    second = M.Explained.of(images[:3], batch.cams[:, 1:], batch.class_indices[:, 1:], base[:, 1:])
    expected = M.deletion(score_of(model), second, steps=5)
    np.testing.assert_allclose(batch.metrics["deletion"][:, 1].numpy(), expected.numpy(), atol=1e-5)
    with CamEngine(model, [model.features], METHODS["gradcam"]) as engine:
        plain = engine.explain(images[:3], TargetSpec("top1"))
    assert plain.metrics is None and plain.metric_passes == 0


# ------------------------------------------------------------------------------------ a wrong explanation
def test_wrong_explanations_score_clearly_worse(demo) -> None:
    """On the demo CNN, gradcam beats a constant map and its own inversion on both deletion (lower) and
    insertion (higher), averaged over the images, by a clear margin."""
    model, images = demo
    with CamEngine(model, [model.features], METHODS["gradcam"]) as engine:
        batch = engine.explain(images, TargetSpec("top1"))
    base = batch.probabilities.gather(1, batch.class_indices)
    results = {}
    for name, cams in {
        "gradcam": batch.cams,
        "inverted": 1 - batch.cams,
        "constant": torch.full_like(batch.cams, 0.5),
    }.items():
        x = M.Explained.of(images, cams, batch.class_indices, base)
        results[name] = (float(M.deletion(score_of(model), x).mean()), float(M.insertion(score_of(model), x).mean()))
    deletion, insertion = results["gradcam"]
    for wrong in ("inverted", "constant"):
        assert results[wrong][0] > deletion + 0.1, results
        assert results[wrong][1] < insertion - 0.1, results
