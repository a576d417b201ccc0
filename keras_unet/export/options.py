"""What to export and how strictly to check it (no TensorFlow here: the command line reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from keras_unet.errors import ConfigError

# every format, in the order they are written (onnx before onnx_int8, which is quantised from it)
FORMATS = ("saved_model", "tflite", "tflite_fp16", "tflite_int8", "onnx", "onnx_int8", "tflite_int8_mixed",
           "tflite_int16x8", "tflite_dynamic")
# written by default: tflite_int8_mixed too (the int8 scheme with the best parity, benchmarks/README.md); the other
# quantisation schemes only when named
DEFAULT_FORMATS = FORMATS[:7]
INT8_FORMATS = ("tflite_int8", "onnx_int8", "tflite_int8_mixed", "tflite_int16x8", "tflite_dynamic")  # gated at --int8-dice


@dataclass
class ExportOptions:
    """What to export and how strictly to check it."""

    formats: tuple = DEFAULT_FORMATS
    calibration: str | None = None  # folder of images for int8 calibration (and parity when the data is absent)
    calibration_images: int = 200
    parity_images: int = 50
    int8_dice: float = 0.98
    float_dice: float = 0.999
    overwrite: bool = False
    refine: bool = True  # the run's refine stage too, when it has one

    def validate(self) -> "ExportOptions":
        """Raise ConfigError on the first option that cannot work."""
        unknown = [f for f in self.formats if f not in FORMATS]
        checks = [
            (bool(self.formats), "--formats names no format"),
            (not unknown, f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}"),
            (self.calibration_images >= 1, f"--calibration-images must be at least 1, got {self.calibration_images}"),
            (self.parity_images >= 1, f"--parity-images must be at least 1, got {self.parity_images}"),
            (0.0 <= self.int8_dice <= 1.0, f"--int8-dice must be between 0 and 1, got {self.int8_dice}"),
            (0.0 <= self.float_dice <= 1.0, f"--float-dice must be between 0 and 1, got {self.float_dice}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


def parse_formats(text: str | None) -> tuple:
    """Format names from 'tflite,onnx' (None or empty: the default ones), in the canonical order."""
    if not text:
        return DEFAULT_FORMATS
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in names)
