"""Numeric agreement of every CAM method with pytorch-grad-cam (the de-facto reference)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gradcam_cli.config import METHOD_NAMES
from gradcam_cli.engine import METHODS, CamEngine, TargetSpec
from tests.conftest import calibrated_random_model

reference = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402

REFERENCE_CLASSES = {
    "gradcam": reference.GradCAM,
    "gradcam++": reference.GradCAMPlusPlus,
    "xgradcam": reference.XGradCAM,
    "hirescam": reference.HiResCAM,
    "gradcam-elementwise": reference.GradCAMElementWise,
    "layercam": reference.LayerCAM,
}
MODELS = {"resnet18": "layer4", "mobilenet_v3_large": "features"}


def test_registry_matches_config_names() -> None:
    assert tuple(METHODS) == METHOD_NAMES


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() < 1e-12 and b.std() < 1e-12:
        return 1.0 if np.allclose(a, b, atol=1e-6) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module", params=list(MODELS))
def model_and_input(request: pytest.FixtureRequest):
    model = calibrated_random_model(request.param)
    torch.manual_seed(1)
    return request.param, model, torch.randn(3, 3, 224, 224)


@pytest.mark.parametrize("method", list(REFERENCE_CLASSES))
def test_agrees_with_reference(method: str, model_and_input) -> None:
    name, model, images = model_and_input
    layer_name = MODELS[name]
    ours_model = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        classes = ours_model(images).argmax(dim=1).tolist()
    ref_model = copy.deepcopy(model)  # the reference needs trainable parameters
    with REFERENCE_CLASSES[method](model=ref_model, target_layers=[ref_model.get_submodule(layer_name)]) as cam:
        expected = cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in classes])
    with CamEngine(ours_model, [ours_model.get_submodule(layer_name)], METHODS[method]) as engine:
        result = engine.explain(images, TargetSpec("top1"))
    ours = result.cams[:, 0].numpy()
    assert result.class_indices[:, 0].tolist() == classes
    for i in range(len(classes)):
        assert pearson(ours[i], expected[i]) >= 0.99, (name, method, i)


@pytest.mark.parametrize("method", ["eigencam", "eigengradcam"])
def test_eigen_projection_matches_reference_up_to_our_sign_rule(method: str) -> None:
    torch.manual_seed(0)
    activations = torch.randn(2, 16, 7, 7)
    gradients = torch.randn(2, 16, 7, 7)
    source = activations if method == "eigencam" else activations * gradients
    # The reference projection before its ReLU, with our sign rule applied (largest magnitude positive).
    expected = []
    for item in source.numpy():
        points = item.reshape(16, -1).T
        points = points - points.mean(axis=0)
        projection = points @ np.linalg.svd(points, full_matrices=True)[2][0]
        expected.append((projection * np.sign(projection[np.abs(projection).argmax()])).reshape(7, 7))
    ours = METHODS[method].rule(activations, gradients).numpy()
    for i in range(2):
        assert pearson(ours[i], expected[i]) >= 0.999
        # The reference's own projection is the same up to its arbitrary sign.
        theirs = get_2d_projection(source[i : i + 1].numpy())[0]
        assert abs(pearson(theirs, expected[i])) >= 0.999


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_runs_batched_without_nan(method: str) -> None:
    model = calibrated_random_model("resnet18").requires_grad_(False)
    with CamEngine(model, [model.layer4], METHODS[method]) as engine:
        result = engine.explain(torch.randn(2, 3, 64, 64), TargetSpec("topk", k=2))
    assert result.cams.shape == (2, 2, 64, 64)
    assert torch.isfinite(result.cams).all() and result.cams.min() >= 0 and result.cams.max() <= 1


def test_several_layers_agree_with_reference() -> None:
    model = calibrated_random_model("resnet18")
    images = torch.randn(2, 3, 160, 160)
    ours_model = copy.deepcopy(model).requires_grad_(False)
    layers = ["layer3", "layer4"]
    with reference.GradCAM(model=model, target_layers=[model.get_submodule(n) for n in layers]) as cam:
        expected = cam(input_tensor=images, targets=[ClassifierOutputTarget(3)] * 2)
    with CamEngine(ours_model, [ours_model.get_submodule(n) for n in layers], METHODS["gradcam"]) as engine:
        ours = engine.explain(images, TargetSpec("fixed", classes=(3,))).cams[:, 0].numpy()
    for i in range(2):
        assert pearson(ours[i], expected[i]) >= 0.99
