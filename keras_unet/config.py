"""The one settings object that every command reads and writes (`config.json` in a run directory)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from keras_unet import __version__
from keras_unet.classes import check_unique
from keras_unet.errors import ConfigError
from keras_unet.run_folder import REFINE_DIR, TEACHER_DIR

DEFAULT_DATA_DIR = "data/sample"
LOSSES = ("bce_dice", "bce", "dice", "focal_tversky")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
UPSAMPLING = ("transpose", "bilinear")
NORMALIZATIONS = ("percentile", "minmax", "none")
PRETRAIN_LOSSES = ("l1", "mse")
CROP_OUTPUT = "structure"  # the one output channel of a model on crops (refine stage)


@dataclass
class ModelConfig:
    """Shape of the U-Net."""

    depth: int = 4
    base_filters: int = 12  # sized so the bundled sample trains in under 5 minutes on 2 CPU cores
    batch_norm: bool = True
    dropout: float = 0.0
    upsampling: str = "transpose"
    prior_bias: bool = True  # start each output bias at the log-odds of its share of foreground in the training masks


@dataclass
class NormalizationConfig:
    """How each image's intensities are mapped to [0, 1], in training and inference alike."""

    method: str = "percentile"
    low: float = 1.0  # percentile mapped to 0
    high: float = 99.0  # percentile mapped to 1
    sample_grid: int = 256  # percentiles are read on a strided grid of about this many pixels a side


@dataclass
class AugmentConfig:
    """On-the-fly augmentation strengths (0 switches one off)."""

    enabled: bool = True
    rotation: float = 10.0  # degrees, +-
    scale: float = 0.10  # relative, +-
    shift: float = 0.05  # fraction of the image size, +-
    brightness: float = 0.10  # added, +-
    contrast: float = 0.20  # relative, +-
    gamma: float = 0.20  # log-uniform range of the exponent, +-
    noise: float = 0.02  # standard deviation of Gaussian noise, at most
    flip: bool = True  # horizontal flip, only when every left_*/right_* class has its partner


@dataclass
class PostprocessConfig:
    """Mask clean-up applied by evaluate and predict."""

    enabled: bool = True
    threshold: float = 0.5
    thresholds: dict = field(default_factory=dict)  # per-class override: {class: threshold}
    keep_largest: dict = field(default_factory=dict)  # {class: N}; absent = keep all components
    min_area: int = 0  # components below this many pixels (of the original image) are dropped
    min_areas: dict = field(default_factory=dict)  # per-class override of min_area: {class: pixels}
    fill_holes: object = True  # true: every class, false: none, or a list of the classes whose holes are filled
    tta: bool = True  # average with the horizontal flip (left/right classes swapped)
    # with tta, also average views shifted by this fraction of the network input up, down, left and right (0: none)
    tta_shift: float = 0.0
    tta_scales: list = field(default_factory=list)  # with tta, also views zoomed about the centre by these factors
    # training chooses keep_largest and fill_holes per class from the training masks where the user set none
    # (imaging.postprocess.auto_postprocess) and writes the choice into config.json; false: the settings as given
    auto: bool = True


def view_checks(shift, scales, names=("tta_shift", "tta_scales")) -> list:
    """(ok, message) pairs for the extra TTA views: a shift in [0, 0.25), zoom factors in [0.5, 2] other than 1;
    names: how the messages call the two settings."""
    return [(isinstance(shift, (int, float)) and 0.0 <= shift < 0.25, f"{names[0]} must be in [0, 0.25), "
             f"got {shift!r}"),
            (isinstance(scales, list) and all(isinstance(s, (int, float)) and 0.5 <= s <= 2.0 and s != 1
                                              for s in scales),
             f"{names[1]} must be a list of zoom factors in [0.5, 2] other than 1, got {scales!r}")]


@dataclass
class PretrainConfig:
    """Self-supervised inpainting pretraining on unlabelled images (--pretrain DIR), sized for 2 CPU cores."""

    epochs: int = 8  # about 11 minutes at 256 px, base 16, on ~140 images and 2 otherwise idle CPU cores
    learning_rate: float = 2e-3  # Adam, cosine-decayed to 5% of it
    batch_size: int = 8
    patches: list = field(default_factory=lambda: [10, 20])  # blanked rectangles per image, [fewest, most]
    patch_size: list = field(default_factory=lambda: [16, 48])  # rectangle sides in pixels at 256 px, scaled with image_size
    noise: float = 0.03  # standard deviation of the Gaussian noise added to the input, at most
    loss: str = "l1"  # l1 or mse, on the blanked pixels
    outside_weight: float = 0.1  # weight of the pixels outside the rectangles, relative to those inside


@dataclass
class CropConfig:
    """This model's inputs: whole images, or square crops around each structure of the listed classes.

    A model on crops has one output channel (`Config.outputs`): the structure the crop was cut around."""

    classes: list = field(default_factory=list)  # empty: whole images (a first stage); else one crop per class
    margin: float = 0.25  # crop side = the structure's longer side x (1 + 2 margin), centred on it
    jitter: float = 0.1  # training only: random shift (fraction of the side) and scale (1 +- jitter) of the crop
    components: list = field(default_factory=list)  # classes cut one crop per component, not around the largest
    overlap: str = "mean"  # where crops of one class overlap, their results' mean or max


@dataclass
class RefineConfig:
    """A second U-Net, trained after the first on crops around each structure, that re-segments them finer."""

    enabled: bool = False
    classes: list = field(default_factory=list)  # empty: every class
    image_size: int = 192  # network input side for the crops
    epochs: int = 30
    base_filters: int = 0  # 0: as the first stage
    margin: float = 0.25  # see CropConfig
    jitter: float = 0.1
    # classes of several parts, cut one crop per component (of at least their postprocess min area) instead of
    # around the largest; "auto": those of 2 to REFINE_MAX_PARTS parts (imaging.postprocess.choose_cleanup), and
    # with classes empty, a class of more parts (separate ribs) or of parts spanning half the image is not refined
    # at all; training writes the choice
    components: object = "auto"
    overlap: str = "mean"  # see CropConfig
    # inference only, read from the whole-image run's refine section (change it in RUN/config.json, no retraining):
    blend: float = 1.0  # weight of the refine model's probabilities inside the crop (1: they replace the first's)


@dataclass
class SelfTrainConfig:
    """Self-training (--self-train DIR): a teacher model labels unlabelled images, then the run's model trains on both."""

    data: str = ""  # folder of unlabelled images (subfolders too); empty: no self-training
    epochs: int = 60  # the final model's epochs over labelled + pseudo-labelled images (the teacher's: `epochs`)


@dataclass
class Config:
    """Every setting of a run; command-line flags override a config file, which overrides defaults."""

    data: str = DEFAULT_DATA_DIR
    classes: list = field(default_factory=list)  # empty: labels.txt in the data folder, else all labels found
    image_size: int = 128  # CPU-friendly default; real radiographs want 256-512 (see configs/)
    batch_size: int = 8
    epochs: int = 40
    learning_rate: float = 2e-3
    loss: str = "bce_dice"
    out: str = "runs/unet"
    seed: int = 0
    precision: str = "auto"
    val_fraction: float = 0.2
    line_width: int = 10  # pixels, for line and linestrip shapes (Labelme's own conversion draws 10)
    early_stopping: int = 15  # patience in epochs; 0 switches it off
    checkpoint: str = "best"  # the model kept: "best" validation Dice, or "last" epoch (validation then only watched)
    cache_dir: str = ""  # empty: ~/.cache/keras_unet (or $KERAS_UNET_CACHE)
    skip_bad: bool = False  # leave out unusable annotation files (listed in skipped.txt) instead of stopping
    # XLA for the training step: true, false, or "auto": on with a GPU; on a CPU only when the planned steps win back
    # the compilation (keras_unet.train.speed); training records the value and why in jit_compile_resolved
    jit_compile: object = "auto"
    init_weights: str = ""  # start from this model.keras, run folder or pretraining weights file (matching layers)
    pretrain_data: str = ""  # folder of unlabelled images: inpainting pretraining before training (pretrain section)
    model: ModelConfig = field(default_factory=ModelConfig)
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    self_train: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    # written by training, never read back as a setting: {"value": ..., "reason": ...} of "auto" resolved
    jit_compile_resolved: dict = field(default_factory=dict)
    precision_resolved: dict = field(default_factory=dict)
    version: str = __version__

    def validate(self) -> "Config":
        """Raise ConfigError on the first setting that cannot work."""
        check_unique(self.classes)
        checks = [
            (self.image_size >= 2 ** self.model.depth and self.image_size % 2 ** self.model.depth == 0,
             f"image_size {self.image_size} must be a multiple of 2**depth = {2 ** self.model.depth}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"),
            (isinstance(self.jit_compile, bool) or self.jit_compile == "auto",
             f"jit_compile must be auto, true or false, got {self.jit_compile!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"),
            *[(isinstance(value, dict), f"{name} must be a mapping, got {value!r}") for name, value in
              (("jit_compile_resolved", self.jit_compile_resolved), ("precision_resolved", self.precision_resolved))],
            (self.checkpoint in ("best", "last"), f"checkpoint must be best or last, got {self.checkpoint!r}"),
            (0.0 < self.val_fraction < 1.0, f"val_fraction must be between 0 and 1, got {self.val_fraction}"),
            (self.model.depth >= 1, f"model.depth must be at least 1, got {self.model.depth}"),
            (self.model.base_filters >= 1, f"model.base_filters must be at least 1, got {self.model.base_filters}"),
            (0.0 <= self.model.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.model.dropout}"),
            (self.model.upsampling in UPSAMPLING, f"model.upsampling must be one of {', '.join(UPSAMPLING)}"),
            (self.normalization.method in NORMALIZATIONS,
             f"normalization.method must be one of {', '.join(NORMALIZATIONS)}"),
            (0.0 <= self.normalization.low < self.normalization.high <= 100.0,
             "normalization percentiles must satisfy 0 <= low < high <= 100"),
            (isinstance(self.postprocess.fill_holes, bool) or (isinstance(self.postprocess.fill_holes, list) and all(
                isinstance(c, str) for c in self.postprocess.fill_holes)),
             f"postprocess.fill_holes must be true, false or a list of classes, got {self.postprocess.fill_holes!r}"),
            *view_checks(self.postprocess.tta_shift, self.postprocess.tta_scales,
                        ("postprocess.tta_shift", "postprocess.tta_scales")),
            *self.pretrain_checks(),
            *self.refine_checks(),
            (self.self_train.epochs >= 1, f"self_train.epochs must be at least 1, got {self.self_train.epochs}"),
            (not (self.self_train.data and self.crops.classes), "self_train is for a whole-image model, not one on crops"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def pretrain_checks(self) -> list:
        """(ok, message) pairs for the pretrain section."""
        p = self.pretrain

        def span(value, low):
            return (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value)
                    and low <= value[0] <= value[1])

        return [
            (p.epochs >= 1, f"pretrain.epochs must be at least 1, got {p.epochs}"),
            (p.learning_rate > 0, f"pretrain.learning_rate must be positive, got {p.learning_rate}"),
            (p.batch_size >= 1, f"pretrain.batch_size must be at least 1, got {p.batch_size}"),
            (span(p.patches, 1), f"pretrain.patches must be [fewest, most] with 1 <= fewest <= most, got {p.patches}"),
            (span(p.patch_size, 1) and p.patch_size[1] <= 256,
             f"pretrain.patch_size must be [smallest, largest] pixels with 1 <= smallest <= largest <= 256, "
             f"got {p.patch_size}"),
            (p.noise >= 0, f"pretrain.noise must be at least 0, got {p.noise}"),
            (p.loss in PRETRAIN_LOSSES, f"pretrain.loss must be one of {', '.join(PRETRAIN_LOSSES)}, got {p.loss!r}"),
            (p.outside_weight >= 0, f"pretrain.outside_weight must be at least 0, got {p.outside_weight}"),
        ]

    def outputs(self) -> list:
        """Names of the model's output channels: the classes, or one `structure` for a model on crops.

        A crops model segments the structure its crop was cut around, whichever class it is: left and right
        clavicle crops teach one channel, and mirroring a crop needs no left/right swap."""
        return [CROP_OUTPUT] if self.crops.classes else list(self.classes)

    def refine_checks(self) -> list:
        """(ok, message) pairs for the refine and crops sections."""
        r, c = self.refine, self.crops
        depth = 2 ** self.model.depth
        unknown = sorted(set(r.classes) - set(self.classes)) if self.classes else []
        return [
            (r.image_size >= depth and r.image_size % depth == 0,
             f"refine.image_size {r.image_size} must be a multiple of 2**depth = {depth}"),
            (r.epochs >= 1, f"refine.epochs must be at least 1, got {r.epochs}"),
            (r.base_filters >= 0, f"refine.base_filters must be at least 0, got {r.base_filters}"),
            (not unknown, f"refine.classes names classes the model does not have: {', '.join(unknown)}"),
            *[(m >= 0, f"{name}.margin must be at least 0, got {m}") for name, m in
              (("refine", r.margin), ("crops", c.margin))],
            *[(0 <= j < 0.5, f"{name}.jitter must be in [0, 0.5), got {j}") for name, j in
              (("refine", r.jitter), ("crops", c.jitter))],
            (not (r.enabled and c.classes), "refine.enabled is for a whole-image model, but crops.classes is set"),
            (0.0 <= r.blend <= 1.0, f"refine.blend must be in [0, 1], got {r.blend}"),
            (r.components == "auto" or (isinstance(r.components, list) and set(r.components) <= set(
                self.classes or r.components)), f"refine.components must be auto or a list of classes, got "
             f"{r.components!r}"),
            *[(o in ("mean", "max"), f"{name}.overlap must be mean or max, got {o!r}") for name, o in
              (("refine", r.overlap), ("crops", c.overlap))],
        ]

    def refine_stage(self) -> "Config":
        """The settings of the refine stage's model: this run's, on crops, in the run's refine/ folder."""
        r = self.refine
        stage = config_from_dict(self.to_dict(), "refine stage")
        stage.image_size, stage.epochs = r.image_size, r.epochs
        stage.model.base_filters = r.base_filters or self.model.base_filters
        stage.out = str(Path(self.out) / REFINE_DIR)
        stage.refine = RefineConfig()
        stage.crops = CropConfig(classes=list(r.classes or self.classes), margin=r.margin, jitter=r.jitter,
                                 components=[] if r.components == "auto" else list(r.components),
                                 overlap=r.overlap)
        stage.init_weights = stage.pretrain_data = ""
        stage.self_train = SelfTrainConfig()
        return stage

    def teacher_stage(self) -> "Config":
        """The settings of self-training's teacher: this run's without self-training or refine, in RUN/teacher."""
        stage = config_from_dict(self.to_dict(), "teacher stage")
        stage.out = str(Path(self.out) / TEACHER_DIR)
        stage.self_train, stage.refine = SelfTrainConfig(), RefineConfig()
        return stage

    def student_stage(self) -> "Config":
        """The settings of the self-trained model: this run's, for self_train.epochs, from random weights."""
        stage = config_from_dict(self.to_dict(), "self-trained stage")
        stage.epochs = self.self_train.epochs
        stage.init_weights = stage.pretrain_data = ""
        return stage

    def to_dict(self) -> dict:
        """Plain nested dict, JSON-ready."""
        return dataclasses.asdict(self)



_SECTIONS = {
    "model": ModelConfig,
    "normalization": NormalizationConfig,
    "augment": AugmentConfig,
    "postprocess": PostprocessConfig,
    "pretrain": PretrainConfig,
    "refine": RefineConfig,
    "crops": CropConfig,
    "self_train": SelfTrainConfig,
}


def _build(cls, values: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    kwargs = {}
    for key, value in values.items():
        if cls is Config and key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a mapping")
            value = _build(_SECTIONS[key], value, f"{where}: {key}")
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(values: dict, where: str = "config") -> Config:
    """Build a Config from a nested dict, rejecting unknown keys."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of settings")
    return _build(Config, values, where)


def merge(config: Config, overrides: dict) -> Config:
    """Return a copy of config with dotted-key overrides applied ({'model.depth': 3, 'epochs': 5})."""
    values = config.to_dict()
    for key, value in overrides.items():
        if value is None:
            continue
        target = values
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return config_from_dict(values, "settings")


def settings_differences(old: dict, new: dict, ignore=()) -> list[str]:
    """'name: old -> new' for each setting that differs between two settings dicts (nested ones as 'model.depth')."""
    old = _flat({k: v for k, v in old.items() if k not in ignore})
    new = _flat({k: v for k, v in new.items() if k not in ignore})
    missing = "(not set)"
    return [f"{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}" for key in sorted(set(old) | set(new))
            if old.get(key, missing) != new.get(key, missing)]


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_config(path) -> Config:
    """Read a YAML or JSON config file (a run's config.json too)."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, FIFO or device: opening a FIFO would block
        raise ConfigError(f"{path}: not a regular file, so not a config file")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as exc:  # yaml and json raise different types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'} ({first})") from None
    return config_from_dict(values, str(path))
