"""The Python API in five calls: train, load any artefact as a predictor, read an image, evaluate, export."""

from __future__ import annotations

from keras_unet.config import Config, merge


def _settings(config: Config | None, settings: dict) -> Config:
    """A Config from an optional base and keyword settings (a section as a dict: model={"depth": 3})."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": inner for name, inner in value.items()})
        else:
            flat[key] = value
    return merge(config or Config(), flat)


def train_model(config: Config | None = None, overwrite: bool = False, log=print, **settings) -> dict:
    """Train as train.py does, from a Config and/or keyword settings; returns the final validation scores."""
    from keras_unet.train.run import train

    return train(_settings(config, settings), overwrite=overwrite, log=log)


def evaluate_model(model, data, out, overwrite: bool = False, log=print, **options) -> dict:
    """Score a model (any artefact or run folder) on a labelled folder and write the report; returns the summary."""
    from keras_unet.evaluate.score import evaluate
    from keras_unet.infer.load import load_predictor

    return evaluate(load_predictor(model), data, out, overwrite=overwrite, log=log, **options)


def export_model(model, out, log=print, **options) -> dict:
    """Export a run's model.keras as export.py does (options: ExportOptions fields); returns the metadata."""
    from keras_unet.export.exporter import export_run
    from keras_unet.export.options import ExportOptions

    return export_run(model, out, ExportOptions(**options), log=log)
