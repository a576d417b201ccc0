"""Run by a Python that has x-anylabeling-cvhub (not by pytest): X-AnyLabeling's own RemoteServer client, set up as
its settings dialog leaves it (remote_server_settings in the user config), lists the server's models, picks the
first, and auto-labels one image twice: as a file (sent as its bytes) and as a canvas picture (no path: sent as the
PNG it re-encodes), then saves the file's shapes as X-AnyLabeling's Save does (LabelFile.save of each Shape's
to_dict) to <image stem>.json beside the image. Prints the models and the shapes it got as one JSON line.

usage: python xanylabeling_client.py SERVER_URL API_KEY IMAGE WORK_DIR"""

import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import yaml  # noqa: E402
from PyQt6.QtGui import QImage  # noqa: E402
from PyQt6.QtWidgets import QApplication  # noqa: E402

import anylabeling.config as config  # noqa: E402


def shapes_of(result):
    return [{"label": s.label, "shape_type": s.shape_type, "score": s.score,
             "points": [[p.x(), p.y()] for p in s.points]} for s in result.shapes]


def main(url, token, image_path, work):
    app = QApplication([])  # noqa: F841 (Qt objects need one)
    config.set_work_directory(work)
    rc = os.path.join(work, ".xanylabelingrc")
    config.get_default_config()  # writes the default user config, as a first start does
    with open(rc, encoding="utf-8") as f:
        settings = yaml.safe_load(f)
    settings["remote_server_settings"] = {"server_url": url, "api_key": token}
    with open(rc, "w", encoding="utf-8") as f:
        yaml.safe_dump(settings, f)
    config.current_config_file = rc
    from anylabeling.services.auto_labeling.remote_server import RemoteServer

    messages = []
    model = RemoteServer({"type": "remote_server", "name": "remote_server", "display_name": "Remote-Server"},
                         messages.append)
    models = model.get_available_models()
    model.set_model_id(next(iter(models)))
    from_file = model.predict_shapes(QImage(image_path), image_path)
    from_canvas = model.predict_shapes(QImage(image_path), None)
    image = QImage(image_path)
    from anylabeling.views.labeling.label_file import LabelFile

    saved = os.path.splitext(image_path)[0] + ".json"
    LabelFile().save(saved, shapes=[shape.to_dict() for shape in from_file.shapes],
                     image_path=os.path.basename(image_path), image_height=image.height(), image_width=image.width())
    print(json.dumps({"saved": saved, "server_url": model.server_url, "models": models, "messages": messages,
                      "replace": from_file.replace, "file": shapes_of(from_file), "canvas": shapes_of(from_canvas)}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
