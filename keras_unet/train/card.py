"""The model card: model_card.md in every run folder (and beside every export), what a model is and is not for."""

from __future__ import annotations

import json
from pathlib import Path

from keras_unet import __version__
from keras_unet.config import Config
from keras_unet.data.phantom import SAMPLE_FORMAT
from keras_unet.io.files import write_bytes_atomic
from keras_unet.run_folder import MODEL_CARD, SPLIT_FILE

SYNTHETIC = ("data/sample", f"sample-v{SAMPLE_FORMAT}")  # the bundled synthetic sample, in a checkout or the cache


def is_synthetic(data) -> bool:
    """Whether a data folder is the bundled synthetic sample."""
    path = Path(data).expanduser()
    return path.as_posix().endswith(SYNTHETIC[0]) or path.name == SYNTHETIC[1]


def model_card(config: Config, result: dict, split: dict, spacings=()) -> str:
    """The card's Markdown: data, training settings and time, validation scores, limits."""
    m = config.model
    per_class = result.get("val_dice_per_class", {})
    found = sorted({tuple(s) for s in spacings if s})
    spacing = ", ".join(f"{r:g} x {c:g} mm" for r, c in found) if found else "not recorded (no DICOM spacing)"
    lines = [
        f"# Model card: {Path(config.out).name}",
        "",
        f"keras_unet {__version__} U-Net segmenting {', '.join(config.classes)} in X-ray images.",
        "",
        "## Data",
        f"- folder: `{config.data}`",
        f"- images: {len(split.get('train', []))} for training, {len(split.get('val', []))} for validation",
        f"- classes: {', '.join(config.classes)}",
        f"- pixel spacing: {spacing}",
        "",
        "## Training",
        f"- input {config.image_size} x {config.image_size} px, U-Net depth {m.depth}, {m.base_filters} base filters, "
        f"upsampling {m.upsampling}",
        f"- {result.get('epochs_run', config.epochs)} of {config.epochs} epochs, batch {config.batch_size}, "
        f"learning rate {config.learning_rate:g} (cosine), loss {config.loss}, precision {config.precision}, "
        f"seed {config.seed}",
        f"- refine stage: {'yes, ' + str(config.refine.image_size) + ' px crops' if config.refine.enabled else 'no'}; "
        f"self-training: {'yes' if config.self_train.data else 'no'}",
        f"- training time: {result.get('train_seconds', 0):.0f} s",
        "",
        "## Validation scores",
        f"- Dice {result.get('val_dice', float('nan')):.3f}, IoU {result.get('val_iou', float('nan')):.3f}",
        *[f"- {name}: Dice {value:.3f}" for name, value in per_class.items()],
        "",
        "## Limits",
    ]
    if is_synthetic(config.data):
        lines.append("- trained on synthetic phantoms only (the bundled sample): not for real radiographs")
    lines += [
        f"- validated on {len(split.get('val', []))} images of the same source as the training images; "
        "other hospitals, devices and exposures may score lower: check with `evaluate.py` on your own images",
        "- research use; not a medical device",
        "",
    ]
    return "\n".join(lines)


def write_model_card(out: Path, config: Config, result: dict, spacings=()) -> Path:
    """Write out/model_card.md from the run's split.json and scores."""
    out = Path(out)
    try:
        split = json.loads((out / SPLIT_FILE).read_text())
    except (OSError, ValueError):
        split = {}
    write_bytes_atomic(out / MODEL_CARD, model_card(config, result, split, spacings).encode("utf-8"))
    return out / MODEL_CARD
