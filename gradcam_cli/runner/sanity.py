"""`gradcam sanity` as a library call: does the configured method's explanation depend on the model's weights?

Adebayo et al. 2018's cascading model-randomisation test, on a sample of images:

  check inputs -> prepare (model, layers, targets; BatchNorm left unfolded) -> the first N images
  -> the trained model's maps -> [a random other class's maps, trained model]
  -> re-initialise the blocks from the logits down, one more per step -> the same classes' maps
  -> measures per step (reports/sanity.py) -> a verdict

Blocks are the model's top-level children that hold parameters, in forward order; a child that holds a
target layer is split into its own children, recursively, so the cascade steps through the target layer
itself (torchvision resnet, target layer4: fc, layer4, layer3, layer2, layer1, bn1, conv1). Re-initialising
is each layer's own `reset_parameters()` (PyTorch's default initialisation), drawn on the CPU from
`sanity.seed`, so the same seed gives the same weights on any device. Only the copy of the model in
memory changes: checkpoints are read, never written, and nothing is written but the reports asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TextIO

import torch
from torch import nn

from gradcam_cli.config import Config
from gradcam_cli.engine import TargetSpec
from gradcam_cli.errors import ConfigError
from gradcam_cli.io.discovery import check_inputs
from gradcam_cli.models.layers import trace_layers
from gradcam_cli.models.sources import with_source_defaults
from gradcam_cli.reports.sanity import CASCADE, RANDOM_CLASS, MapChange, SanityCheck, Step, map_change
from gradcam_cli.runner.loader import normalise
from gradcam_cli.runner.prepare import NondeterministicOps, PreparedRun, prepare, split_cores
from gradcam_cli.runner.sample import Sample, load_sample

FALLBACK_STD = 0.02  # a parameter without a reset_parameters() whose trained values are all equal


@dataclass(frozen=True)
class Block:
    """One step of the cascade: a module re-initialised whole, or only its own parameters (`own_only`: a
    module split into its children, such as a ViT's position embedding beside its encoder layers)."""

    name: str  # dotted module name; "" is the model itself
    own_only: bool = False
    reaches_target: bool = False  # at or below a target layer in forward order: its activations change

    @property
    def label(self) -> str:
        return f"{self.name or 'model'} (own parameters)" if self.own_only else self.name


def _positions(order: Iterable[str]) -> dict[str, int]:
    """Each module's place in forward order, by the last call of anything inside it (a container that is
    never called itself, a ModuleList, takes its members' place)."""
    position: dict[str, int] = {}
    for index, name in enumerate(order):
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            position[".".join(parts[:depth])] = index
    return position


def cascade_blocks(module: nn.Module, target_layers: list[str], order: list[str]) -> list[Block]:
    """The blocks to re-initialise, top down (the logits first), from the module tree and the forward order
    `order` (module names in call order, as `trace_layers` lists them). Modules never called, or without
    parameters, are left out: they cannot change the maps."""
    position = _positions(order)
    deepest_target = max((position.get(name, -1) for name in target_layers), default=-1)

    def holds_target(name: str) -> bool:
        return any(target.startswith(name + ".") for target in target_layers)

    def blocks_of(parent: nn.Module, prefix: str) -> list[Block]:  # bottom up
        found = []
        if any(True for _ in parent.parameters(recurse=False)):  # used before its children, as embeddings are
            found.append(Block(prefix.rstrip("."), own_only=True, reaches_target=True))
        children = sorted(
            (position[prefix + name], prefix + name, child)
            for name, child in parent.named_children()
            if prefix + name in position and any(True for _ in child.parameters())
        )
        for place, name, child in children:
            if holds_target(name):
                found.extend(blocks_of(child, name + "."))
            else:
                found.append(Block(name, reaches_target=place <= deepest_target))
        return found

    return blocks_of(module, "")[::-1]


def reinitialise(module: nn.Module, block: Block, seed: int) -> None:
    """Re-initialise `block` of `module` in place: every layer's `reset_parameters()` (PyTorch's default
    init), and for parameters of modules without one, a Gaussian with the trained tensor's standard
    deviation (it keeps the scale and destroys what was learnt). Drawn on the CPU from `seed`: the block
    is moved there for the draw (reset_parameters() draws from its tensors' device) and back."""
    target = module.get_submodule(block.name) if block.name else module
    parts = [target] if block.own_only else list(target.modules())
    device = next(target.parameters()).device
    moved = device.type != "cpu" and not block.own_only
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        if moved:
            target.to("cpu")  # keeps each tensor's memory format (channels_last), as .to(device) below
        for part in parts:
            reset = getattr(part, "reset_parameters", None)
            if callable(reset) and not block.own_only:
                reset()
                continue
            for parameter in part.parameters(recurse=False):
                trained = parameter.detach().float()
                std = float(trained.std()) if trained.numel() > 1 else 0.0
                values = torch.randn(parameter.shape, generator=generator) * (std if std > 0 else FALLBACK_STD)
                parameter.copy_(values.to(parameter.dtype))
        if moved:
            target.to(device)


def _explain(prepared: PreparedRun, pixels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The maps (N, K, H, W) of the given classes (N, K), on the CPU. The engine explains one class for a
    whole batch, so rows are grouped by class (the cascade explains the classes the trained model chose,
    whatever the randomised one predicts)."""
    config, engine = prepared.config, prepared.engine
    count, k = classes.shape
    cams = torch.zeros(count, k, *config.preprocess.size)
    for rank in range(k):
        for cls in classes[:, rank].unique().tolist():
            rows = (classes[:, rank] == cls).nonzero().flatten()
            for chunk in rows.split(config.runtime.batch_size):
                images = normalise(pixels[chunk], config.preprocess, prepared.device)
                result = engine.explain(images, TargetSpec("fixed", classes=(int(cls),)))
                cams[chunk, rank] = result.cams[:, 0].float().cpu()
    return cams


def _trained(prepared: PreparedRun, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    """The trained model's maps, its explained classes (cam.targets) and their quality flags."""
    config = prepared.config
    cams, classes, quality = [], [], []
    for chunk in pixels.split(config.runtime.batch_size):
        result = prepared.engine.explain(normalise(chunk, config.preprocess, prepared.device), prepared.targets)
        cams.append(result.cams.float().cpu())
        classes.append(result.class_indices.cpu())
        quality.extend(result.quality)
    return torch.cat(cams), torch.cat(classes), quality


def _changes(
    sample: Sample, keep: list[tuple[int, int]], classes: torch.Tensor, trained: torch.Tensor, other: torch.Tensor
) -> tuple[MapChange, ...]:
    found = []
    for row, rank in keep:
        top, bottom, left, right = sample.boxes[row]
        a = trained[row, rank, top:bottom, left:right].numpy()
        b = other[row, rank, top:bottom, left:right].numpy()
        found.append(map_change(sample.paths[row], int(classes[row, rank]), a, b))
    return tuple(found)


def _random_other_classes(classes: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """For every explained class, a different class drawn uniformly (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    draw = torch.randint(0, num_classes - 1, classes.shape, generator=generator)
    return draw + (draw >= classes).long()  # skip the explained class itself


def check_sanity(
    config: Config,
    inputs: list[str],
    stdin: TextIO | None = None,
    progress: Callable[[str], None] | None = None,
) -> SanityCheck:
    """Run the sanity check on the first `config.sanity.limit` images of `inputs`; raises GradcamError
    (exit 2) for a config, model or input that cannot be checked. Writes nothing. `progress` hears one line
    per step (a deep cascade on a large model takes a while)."""
    tell = progress or (lambda line: None)
    inputs = check_inputs(inputs)
    config = with_source_defaults(config)
    limits = config.sanity
    # Unfolded BatchNorm: the blocks are the model's own modules, and resetting one gives a fresh layer.
    config = config.model_copy(update={"runtime": config.runtime.model_copy(update={"fuse_batchnorm": False})})
    prepared = prepare(config)
    prepared.engine.metrics = None  # cam.metrics are the run's: the check compares maps, nothing else
    module = prepared.engine.model
    height, width = config.preprocess.size
    example = torch.zeros(1, 3, height, width, device=prepared.device)
    order = [info.name for info in trace_layers(module, example)[0]]
    blocks = cascade_blocks(module, prepared.layer_names, order)
    if limits.max_steps is not None:
        blocks = blocks[: limits.max_steps]
    if not blocks:
        raise ConfigError(
            "the model has no parameters the forward pass uses, so there is nothing to randomise; "
            "`gradcam sanity` needs a model with weights."
        )
    cores = split_cores(config.runtime.workers, config.runtime.render_workers, config.runtime.threads, prepared.device)
    torch.set_num_threads(cores.threads)
    sample = load_sample(config, inputs, stdin, cores.decode, limits.limit)
    prepared.engine.show_progress = False
    steps: list[Step] = []
    with NondeterministicOps(), prepared.engine:
        trained, classes, quality = _trained(prepared, sample.pixels)
        keep = [(row, rank) for row in range(len(sample.paths)) for rank in range(classes.shape[1])]
        blank = [(row, rank) for row, rank in keep if quality[row][rank] in ("empty", "flat", "nonfinite")]
        skipped = sample.skipped + [
            (sample.paths[row], f"class {int(classes[row, rank])}: the trained model's map is {quality[row][rank]}")
            for row, rank in blank
        ]
        keep = [pair for pair in keep if pair not in blank]
        if not keep:
            raise ConfigError(
                f"every map of the trained model is blank ({len(blank)} maps empty or flat), so there is nothing "
                "to compare; check model.target_layer and cam.method with `gradcam run` first."
            )
        if limits.random_class and prepared.num_classes > 1:
            others = _random_other_classes(classes, prepared.num_classes, limits.seed)
            cams = _explain(prepared, sample.pixels, others)
            steps.append(Step("random class", RANDOM_CLASS, (), False, _changes(sample, keep, classes, trained, cams)))
        randomised: list[str] = []
        reaches = False
        for index, block in enumerate(blocks):
            reinitialise(module, block, limits.seed + index + 1)
            randomised.append(block.label)
            reaches = reaches or block.reaches_target
            cams = _explain(prepared, sample.pixels, classes)
            changes = _changes(sample, keep, classes, trained, cams)
            steps.append(Step(block.label, CASCADE, tuple(randomised), reaches, changes))
            mean = steps[-1].mean_spearman
            tell(f"step {index + 1}/{len(blocks)}: {block.label} re-initialised, mean Spearman {mean:.3f}")
    steps.sort(key=lambda step: step.kind != CASCADE)  # the cascade top down, then the random-class row
    return SanityCheck(
        method=config.cam.method,
        target_layers=prepared.layer_names,
        thresholds=limits,
        steps=steps,
        images=len(sample.paths),
        skipped=skipped,
        model=dict(prepared.model.description, num_classes=prepared.num_classes),
    )
