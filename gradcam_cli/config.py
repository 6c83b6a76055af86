"""The one strict config object: YAML in, frozen pydantic models out.

Everything is validated once, here. Unknown keys and bad values become a `ConfigError` that names the
key and suggests the closest valid one. Relative asset paths (weights, labels, factory files) resolve
against the config file's folder; `output.dir` resolves against the working directory. Loading a config
never imports torch; preprocessing that a model source knows itself (timm's pretrained config, an ONNX
graph's input size) is filled in later, by `models.sources.with_source_defaults`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gradcam_cli.errors import ConfigError

# Kept here (not imported from the engine) so loading a config never imports torch;
# tests/test_engine_methods.py checks this tuple against the engine's registry, as
# tests/test_models_sources.py checks MODEL_SOURCES against models/sources.py.
METHOD_NAMES: tuple[str, ...] = (
    "gradcam",
    "gradcam++",
    "xgradcam",
    "hirescam",
    "gradcam-elementwise",
    "layercam",
    "eigencam",
    "eigengradcam",
    "scorecam",
    "ablationcam",
)
# The faithfulness metrics (engine/metrics.py, checked against this tuple by tests/test_engine_metrics.py).
METRIC_NAMES: tuple[str, ...] = ("deletion", "insertion", "confidence_change", "road_most", "road_least")
# which way is better, per metric (a lower deletion AUC means the CAM found what the model needs)
METRIC_HIGHER_IS_BETTER: dict[str, bool] = {
    "deletion": False,
    "insertion": True,
    "confidence_change": True,
    "road_most": False,
    "road_least": True,
}
# cam keys that only matter with cam.metrics set: left out of both hashes while it is empty (`metric_keys_off`)
METRIC_KEYS: tuple[str, ...] = ("metrics", "metric_steps", "road_percentiles")
COLORMAP_NAMES: tuple[str, ...] = (
    "jet",
    "turbo",
    "viridis",
    "inferno",
    "magma",
    "plasma",
    "hot",
    "bone",
    "gray",
    "parula",
    "cividis",
)
MODEL_SOURCES: tuple[str, ...] = ("torchvision", "timm", "factory", "pickled", "onnx")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context or {}
    return Path(context.get("base_dir", "."))


def looks_like_path(value: str) -> bool:
    """Weights given as a file (not a torchvision enum name such as IMAGENET1K_V2)."""
    return "/" in value or "\\" in value or value.lower().endswith(CHECKPOINT_SUFFIXES)


class ModelConfig(_Strict):
    """Which network to explain and where its weights, labels and target layer come from."""

    torchvision: str | None = Field(None, description="torchvision model name, e.g. resnet50")
    timm: str | None = Field(None, description="timm model name, e.g. convnext_tiny (extra: gradcam-cli[timm])")
    factory: str | None = Field(None, description='"pkg.module:fn" or "path/to/file.py:fn" returning a module')
    pickled: Path | None = Field(None, description="a fully pickled nn.Module (needs allow_pickle: true)")
    onnx: Path | None = Field(
        None, description="an ONNX file (MATLAB, Keras/tf2onnx, torch.onnx exports; extra: gradcam-cli[onnx])"
    )
    input_layout: Literal["auto", "nchw", "nhwc"] = Field(
        "auto", description="model.onnx: the graph's image input layout; auto: from its input shape, else nchw"
    )
    allow_pickle: bool = Field(False, description="opt in to unpickling checkpoints (runs code in the file)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the builder")
    weights: str | None = Field(None, description="torchvision weights name, DEFAULT, or a checkpoint path")
    labels: str | list[str] = Field("from-weights", description="from-weights | none | file | inline list")
    target_layer: str | list[str] = Field("auto", description="dotted module path(s) or auto")
    output: int | str | None = Field(None, description="how to get scores from the model's return value")
    num_classes: int | None = Field(None, ge=1, description="expected number of classes (checked)")
    activation_layout: Literal["auto", "nchw", "nhwc", "tokens"] = Field(
        "auto", description="target layer output layout; auto: NCHW maps, NHWC maps (Swin), ViT tokens"
    )
    token_grid: tuple[int, int] | None = Field(
        None, description="tokens layout: patch grid [h, w] (default: from input)"
    )
    skip_tokens: int | None = Field(None, ge=0, description="tokens layout: leading non-patch tokens to drop")

    @field_validator("pickled", "onnx", mode="after")
    @classmethod
    def _resolve_model_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else (_base_dir(info) / value).resolve()

    @field_validator("weights", mode="after")
    @classmethod
    def _resolve_weights(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and looks_like_path(value):
            return str((_base_dir(info) / value).resolve())
        return value

    @field_validator("labels", mode="after")
    @classmethod
    def _resolve_labels(cls, value: str | list[str], info: ValidationInfo) -> str | list[str]:
        if isinstance(value, str) and value not in ("from-weights", "none"):
            return str((_base_dir(info) / value).resolve())
        return value

    @field_validator("factory", mode="after")
    @classmethod
    def _resolve_factory(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        target, sep, fn = value.rpartition(":")
        if not sep or not target or not fn.isidentifier():
            raise ValueError('factory must look like "pkg.module:function" or "path/to/file.py:function"')
        if target.endswith(".py"):
            return f"{(_base_dir(info) / target).resolve()}:{fn}"
        return value

    @field_validator("target_layer", mode="after")
    @classmethod
    def _layers_not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("target_layer list is empty")
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ModelConfig:
        sources = [name for name in MODEL_SOURCES if getattr(self, name) is not None]
        if len(sources) != 1:
            raise ValueError(
                f"model needs exactly one of {', '.join(MODEL_SOURCES[:-1])} or {MODEL_SOURCES[-1]}"
                + (f" (got {', '.join(sources)})" if sources else "")
            )
        if self.onnx is not None and (self.weights is not None or self.kwargs):
            raise ValueError("model.onnx: the ONNX file holds the weights and architecture; remove weights/kwargs")
        if self.onnx is None and self.input_layout != "auto":
            raise ValueError("model.input_layout only applies to model.onnx (see activation_layout for layers)")
        if self.pickled is not None and not self.allow_pickle:
            raise ValueError(
                "model.pickled loads a whole pickled model, which can run arbitrary code from the file; "
                "set model.allow_pickle: true only for files you trust, or save a state_dict and use "
                "torchvision/factory with weights instead"
            )
        return self

    @property
    def source(self) -> str:
        """The one model source set (a key of MODEL_SOURCES)."""
        return next(name for name in MODEL_SOURCES if getattr(self, name) is not None)

    @property
    def target_layers(self) -> list[str]:
        return [self.target_layer] if isinstance(self.target_layer, str) else list(self.target_layer)


class PreprocessConfig(_Strict):
    """How a decoded image becomes the model's input tensor (and how heatmaps map back)."""

    size: tuple[int, int] = Field((224, 224), description="model input height, width")
    resize: Literal["stretch", "letterbox", "center_crop"] = Field("stretch", description="resize mode")
    mean: tuple[float, float, float] = Field(
        (0.485, 0.456, 0.406), description="per-channel mean, in pixel_range units and channel_order"
    )
    std: tuple[float, float, float] = Field(
        (0.229, 0.224, 0.225), description="per-channel std, in pixel_range units and channel_order"
    )
    pixel_range: tuple[float, float] = Field(
        (0.0, 1.0),
        description="pixels 0..255 map linearly onto this before mean/std: [0, 1] torchvision, "
        "[0, 255] caffe-style Keras and MATLAB, [-1, 1] Keras tf-style (with mean 0, std 1)",
    )
    channel_order: Literal["rgb", "bgr"] = Field("rgb", description="channel order fed to the model (bgr: caffe)")
    fast_decode: bool = Field(
        False,
        description="JPEGs much larger than the model input are decoded at 1/2, 1/4 or 1/8 scale (in the DCT "
        "domain) before the final resize: faster, model input within a few grey levels (README, Speed)",
    )
    device_decode: bool = Field(
        False,
        description="baseline upright JPEGs are decoded, resized and (as JPEG overlays) rendered on the model's "
        "device (nvJPEG on a GPU); others take the CPU path; model input within a few grey levels (README, GPU)",
    )

    @field_validator("size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 8:
            raise ValueError("size must be [height, width] with both >= 8")
        return value

    @field_validator("std")
    @classmethod
    def _nonzero_std(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError("std values must be > 0")
        return value

    @field_validator("pixel_range")
    @classmethod
    def _increasing_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise ValueError("pixel_range must be [low, high] with low < high, e.g. [0, 1] or [0, 255]")
        return value


class CamConfig(_Strict):
    """Which CAM method and which classes to explain."""

    method: str = Field("gradcam", description="CAM method: " + ", ".join(METHOD_NAMES))
    targets: Literal["top1", "topk"] | list[str | int] = Field(
        "top1", description="top1 | topk | a list of class names or indices"
    )
    top_k: int = Field(1, ge=1, le=100, description="how many predicted classes to explain with topk")
    aug_smooth: bool = Field(False, description="average over flips x brightness (6 passes), as the reference")
    eigen_smooth: bool = Field(False, description="first principal component of the weighted activations")
    chunk_size: int = Field(
        64, ge=1, le=4096, description="rows per extra forward pass (scorecam, ablationcam, cam.metrics)"
    )
    metrics: tuple[str, ...] = Field(
        (),
        description="faithfulness metrics recorded per explained class: " + ", ".join(METRIC_NAMES) + " (README, "
        "Faithfulness metrics); each costs extra forward passes; empty: none",
    )
    metric_steps: int = Field(
        20, ge=2, le=1000, description="deletion/insertion: equal steps from the plain to the fully perturbed input"
    )
    road_percentiles: tuple[float, ...] = Field(
        (10, 20, 30, 40, 50, 60, 70, 80, 90),
        description="road_most/road_least: CAM percentiles at or above which pixels are imputed (one forward pass "
        "each); the metric is the mean over them",
    )

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(name.lower() for name in value)
        for given, name in zip(value, names, strict=True):
            if name not in METRIC_NAMES:
                raise ValueError(
                    f"unknown metric {given!r}{did_you_mean(given, METRIC_NAMES)}; known: {', '.join(METRIC_NAMES)}"
                )
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"metric {repeated[0]!r} is listed twice")
        return names

    @field_validator("road_percentiles")
    @classmethod
    def _percentiles_inside(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or not all(0 < p < 100 for p in value):
            raise ValueError("road_percentiles must be a non-empty list of numbers between 0 and 100 (exclusive)")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        name = value.lower()
        if name not in METHOD_NAMES:
            raise ValueError(f"unknown method {value!r}{did_you_mean(value, METHOD_NAMES)}")
        return name

    @field_validator("targets")
    @classmethod
    def _targets_not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("targets list is empty")
        return value


class OutputConfig(_Strict):
    """What is written to the output folder."""

    dir: Path = Field(Path("gradcam-out"), description="output folder (relative to the working directory)")
    heatmaps: bool = Field(True, description="write single-channel heatmap PNGs")
    overlays: bool = Field(True, description="write colour overlays blended over the original image")
    colormap: Literal[COLORMAP_NAMES] = Field("jet", description="overlay colormap (OpenCV names)")  # type: ignore[valid-type]
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the colormap in the overlay")
    raw: bool = Field(False, description="also write float32 .npy CAMs (feature and original resolution)")
    png_compression: int = Field(1, ge=0, le=9, description="PNG zlib level: 1 is fast, 9 is small")
    overlay_format: Literal["jpeg", "png", "webp"] = Field(
        "jpeg", description="overlay file format: jpeg (small, 4:4:4 chroma), png (lossless, large) or webp"
    )
    overlay_quality: int = Field(90, ge=1, le=100, description="jpeg/webp overlay quality")
    overlay_max_side: int | None = Field(
        None, ge=16, description="shrink overlays to at most this many pixels on the long side (null: full size)"
    )
    report: bool = Field(False, description="write the HTML gallery index.html at the end of every run")

    @field_validator("dir", mode="before")
    @classmethod
    def _dir_not_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError(
                "an empty output folder name would write the results into the working directory; name a folder"
            )
        return value


class RuntimeConfig(_Strict):
    """Where and how fast to compute."""

    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    batch_size: int = Field(32, ge=1, le=4096, description="images per forward pass")
    workers: Literal["auto"] | int = Field("auto", description="decode worker processes (0: in-process)")
    render_workers: Literal["auto"] | int = Field(
        "auto",
        description="processes that map CAMs onto the originals and write the files, each holding one image's "
        "full-resolution work at a time (0: threads of the main process)",
    )
    threads: Literal["auto"] | int = Field("auto", description="torch threads of the process that runs the model")
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = Field(
        "fp32",
        description="fp32 (exact: TF32 off on GPUs), tf32 (fp32 with TensorFloat-32 matmuls/convs on "
        "Ampere and newer), bf16 or fp16 (autocast)",
    )
    fuse_batchnorm: bool = Field(True, description="fold BatchNorm into the preceding conv (faster, same maps)")
    deterministic: bool = Field(
        True, description="deterministic torch algorithms, so reruns give byte-identical heatmaps"
    )
    ray_gpus_per_actor: float = Field(
        1.0, gt=0, le=16, description="--engine ray on GPUs: GPUs per CAM actor (0.5: two actors share one)"
    )

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        if not _DEVICE_PATTERN.match(value):
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return value

    @field_validator("workers", "render_workers")
    @classmethod
    def _workers_range(cls, value: Literal["auto"] | int) -> Literal["auto"] | int:
        if isinstance(value, int) and not 0 <= value <= 64:
            raise ValueError("workers must be auto or 0..64")
        return value

    @field_validator("threads")
    @classmethod
    def _threads_range(cls, value: Literal["auto"] | int) -> Literal["auto"] | int:
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError("threads must be auto or 1..256")
        return value


class InputConfig(_Strict):
    """Which files are read and how they are guarded."""

    extensions: tuple[str, ...] = Field(
        (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"),
        description="file extensions treated as images (case-insensitive)",
    )
    max_pixels: int = Field(89_478_485, ge=1, description="larger images become error records (bomb guard)")
    max_file_mb: float = Field(
        1024,
        gt=0,
        description="files and archive members larger than this many MiB become error records (FileTooLarge), "
        "decided from their size before any byte is read",
    )
    include: tuple[str, ...] = Field((), description="glob patterns on the relative path; empty: everything")
    exclude: tuple[str, ...] = Field((), description="glob patterns on the relative path to leave out")
    follow_symlinks: bool = Field(True, description="follow symlinked files and folders (loops are detected)")

    @property
    def max_file_bytes(self) -> int:
        """`max_file_mb` in bytes: the one conversion discovery, the decode and the render workers use."""
        return int(self.max_file_mb * 2**20)

    @field_validator("extensions")
    @classmethod
    def _dotted_lowercase(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(ext.lower() if ext.startswith(".") else "." + ext.lower() for ext in value)


class CompareConfig(_Strict):
    """Thresholds of `gradcam compare` (attention regression checks); not part of the config hash."""

    min_correlation: float = Field(
        0.95, ge=-1.0, le=1.0, description="least Pearson correlation between baseline and current heatmap"
    )
    max_mean_abs_diff: float = Field(0.05, ge=0.0, le=1.0, description="largest mean |difference| (heatmaps in 0..1)")
    min_iou: float = Field(0.5, ge=0.0, le=1.0, description="least IoU of the two heatmaps' top-20% regions")
    max_peak_shift: float | None = Field(
        None, ge=0.0, description="largest move of the heatmap peak in original-image pixels (null: not checked)"
    )
    max_score_change: float | None = Field(
        None, ge=0.0, le=1.0, description="largest change of the top-1 probability (null: not checked)"
    )
    max_metric_drop: float | None = Field(
        None,
        ge=0.0,
        description="largest worsening of a cam.metrics mean over the images explained in both runs (deletion "
        "or road_most up, insertion, confidence_change or road_least down; null: not checked)",
    )
    allow_label_change: bool = Field(False, description="a changed top-1 class is not drift by itself")
    allow_missing: bool = Field(False, description="images on one side only are reported, not an error")


class SanityConfig(_Strict):
    """`gradcam sanity` (Adebayo et al. 2018's model-randomisation test); not part of the config hash."""

    limit: int = Field(16, ge=1, description="images checked: the first N in discovery order (--limit)")
    max_spearman: float = Field(
        0.7,
        ge=-1.0,
        le=1.0,
        description="flag the method when the mean Spearman correlation between the trained model's maps and the "
        "fully randomised model's is above this",
    )
    unchanged_spearman: float = Field(
        0.9, ge=-1.0, le=1.0, description="a map counts as barely changed at a step when its Spearman is >= this"
    )
    max_unchanged_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="flag the method when more than this fraction of images barely changed at the deepest step",
    )
    max_steps: int | None = Field(
        None, ge=1, description="cascade steps, from the logits down (null: every parameterised block to the input)"
    )
    random_class: bool = Field(
        True, description="also explain a random other class with the trained model (reported, not part of the verdict)"
    )
    seed: int = Field(0, ge=0, description="seed of the re-initialisation and of the random classes")


class Config(_Strict):
    """The whole, validated configuration of one run."""

    model: ModelConfig
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    cam: CamConfig = Field(default_factory=CamConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)
    sanity: SanityConfig = Field(default_factory=SanityConfig)

    def config_hash(self) -> str:
        """Hash of the config's text (model, weights, layer, preprocessing, method, targets), paths included.

        Not a run's identity: a run is identified by content (io/identity.py: the checkpoint's bytes, not
        its path), and run.json and the manifest record that identity's hash as their `config_hash`. This
        text hash is what earlier releases recorded there (their folders are migrated from it, see
        runner/resume.py). Keys added since a folder's first release count only when set away from their
        default, so the hash of every config that leaves them alone stays what it was (HASHED_WHEN_SET)."""
        effective = {}
        for section in ("model", "preprocess", "cam"):
            values = getattr(self, section).model_dump(mode="json")
            for key, default in HASHED_WHEN_SET.get(section, {}).items():
                if values.get(key) == default:
                    values.pop(key, None)
            effective[section] = metric_keys_off(values) if section == "cam" else values
        return hashlib.sha256(json.dumps(effective, sort_keys=True).encode()).hexdigest()


# Hashed keys added after run folders already existed: {section: {key: default}}; at the default they are
# left out of config_hash, so upgrading does not change any existing folder's hash.
HASHED_WHEN_SET: dict[str, dict[str, Any]] = {"preprocess": {"fast_decode": False, "device_decode": False}}


def metric_keys_off(cam: dict[str, Any]) -> dict[str, Any]:
    """The dumped `cam` section as the hashes see it: without cam.metrics and its settings while no metric is
    asked for (they change no heatmap, and every folder made before metrics existed keeps its config_hash);
    with every one of them once metrics are on (then the records hold values these settings determine)."""
    if cam.get("metrics"):
        return cam
    return {key: value for key, value in cam.items() if key not in METRIC_KEYS}


def did_you_mean(word: Any, choices: Any, n: int = 1, cutoff: float = 0.6, sentence: bool = False) -> str:
    """' (did you mean 'x', 'y'?)' for the closest choices, or '' when nothing is close; with `sentence`,
    ' Did you mean 'x', 'y'?' to follow a full stop."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=cutoff)
    if not close:
        return ""
    names = ", ".join(repr(c) for c in close)
    return f" Did you mean {names}?" if sentence else f" (did you mean {names}?)"


def _fields_at(loc: tuple[Any, ...]) -> dict[str, Any] | None:
    """The pydantic fields of the model that owns `loc[-1]` (for "did you mean" suggestions)."""
    model: Any = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model.model_fields


MESSAGE_VALUE_CHARS = 200  # a value shown in a message is cut to this (a 100 MB value gives a short message)


def _shorten(text: str, limit: int = MESSAGE_VALUE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _cut(value: Any, limit: int = MESSAGE_VALUE_CHARS) -> str:
    """repr(value), cut to `limit` characters with "..." (values in messages can be huge)."""
    if isinstance(value, (str, bytes)):
        value = value[: limit + 1]  # no need to repr 100 MB to show 200 characters
    return _shorten(repr(value), limit)


def _describe(error: dict[str, Any]) -> str:
    # Unions report one error per member; keep the path up to the first non-name part.
    loc = tuple(part for part in error["loc"] if isinstance(part, (str, int)))
    parts: list[str] = []
    for part in loc:
        if isinstance(part, str) and (part.islower() or "_" in part or part.isidentifier()):
            parts.append(part)
        elif isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            break
    key = _shorten(".".join(parts).replace(".[", "[") or "(top level)", 120)
    if error["type"] == "extra_forbidden":
        fields = _fields_at(loc) or {}
        return f"unknown key '{key}'{did_you_mean(_shorten(str(loc[-1]), 120), fields)}"
    if error["type"] == "missing":
        return f"missing required key '{key}'"
    message = error["msg"].removeprefix("Value error, ")
    message = _shorten(message, 4 * MESSAGE_VALUE_CHARS)  # a validator's message may quote the value
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {_cut(value)})"
    return f"bad value for '{key}'{shown}: {message}"


def parse_config(data: Any, base_dir: Path, source: str = "config", overridden: tuple[str, ...] = ()) -> Config:
    """Validate a raw mapping (already merged with CLI overrides) into a `Config`. A bad value of a key in
    `overridden` came from the command line, and the message says so instead of blaming the file."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'model' section.")
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source, overridden)) from None
    return config


def _explain(exc: ValidationError, source: str, overridden: tuple[str, ...] = ()) -> str:
    seen: list[str] = []
    from_options = True
    for error in exc.errors():
        text = _describe(error)
        key = ".".join(str(part) for part in error["loc"][:2])
        if key in overridden:
            text += " (set by a command-line option)"
        else:
            from_options = False
        if text not in seen:
            seen.append(text)
    where = "command line" if from_options and overridden else source
    return f"{where}: " + "; ".join(seen[:5]) + "."


def load_compare_config(path: Path | None, overrides: dict[str, Any] | None = None) -> CompareConfig:
    """The `compare:` section of a config file (other sections are not needed) merged with CLI overrides."""
    data = read_config_file(Path(path)) if path is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping.")
    section = apply_overrides({"compare": data.get("compare") or {}}, overrides or {})
    try:
        return _CompareFile.model_validate(section).compare
    except ValidationError as exc:
        raise ConfigError(_explain(exc, str(path or "compare options"))) from None


class _CompareFile(_Strict):
    compare: CompareConfig


class _AliasRefused(yaml.MarkedYAMLError):
    """Valid YAML that a config may not use (an anchor or an alias)."""


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without anchors and aliases: an alias repeats a node, and nested aliases make a 1 KB file
    ("billion laughs") expand to gigabytes. A config never needs them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _AliasRefused(
                None,
                None,
                f"found the anchor or alias {_shorten(event.anchor or '', 40)!r}: YAML anchors (&name), aliases "
                "(*name) and merge keys (<<) are not allowed in a config; write the values out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def read_config_file(path: Path) -> dict[str, Any]:
    """Read YAML like `safe_load` (without aliases); a missing file or a syntax error is a ConfigError whose
    message keeps YAML's lines (the caret under the bad column)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}. Pass an existing YAML file with --config.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}.") from None
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        where = str(exc).replace('"<unicode string>"', f'"{path}"')
        what = "uses a YAML feature a config may not" if isinstance(exc, _AliasRefused) else "is not valid YAML"
        raise ConfigError(f"{path} {what}:\n{where}") from None
    return data if data is not None else {}


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge CLI overrides given as dotted keys ({"cam.method": "gradcam"}) into raw config data."""
    merged = json.loads(json.dumps(data, default=str))  # a deep copy; YAML values are JSON-like
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = merged
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[leaf] = value
    return merged


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load, merge CLI overrides and validate a config file."""
    path = Path(path)
    data = read_config_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with a 'model' section.")
    given = tuple(key for key, value in (overrides or {}).items() if value is not None)
    return parse_config(apply_overrides(data, overrides or {}), path.resolve().parent, str(path), given)
