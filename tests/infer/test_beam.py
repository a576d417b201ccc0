"""predict.py --runner beam: the Apache Beam pipeline writes predict.py's masks byte for byte, one figures CSV whose
numbers match the masks, and an errors CSV row (not a failed pipeline) for each image it cannot segment.

apache-beam (the `beam` extra) needs protobuf<7 and pillow<13; where the main environment holds newer ones, .ci/run
runs this file again in .venv-beam (requirements-beam.txt), where these tests run instead of skipping."""

from __future__ import annotations

import csv
import json
import os
import posixpath
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from conftest import REPO, SAMPLE_DIR
from keras_unet.cli import predict as predict_cli
from keras_unet.infer import beam as kb
from keras_unet.infer.load import load_predictor
from keras_unet.infer.predict import predict_folder
from keras_unet.infer.ranking import rank_folder
from keras_unet.io import images

FIXTURE = REPO / "tests" / "fixtures" / "v0_1"
STEMS = ["phantom_000", "phantom_001", "phantom_002"]
NO_BEAM = "apache-beam is not installed here (the beam extra; .ci/run runs this file in .venv-beam)"
needs_beam = pytest.mark.skipif(kb.beam is None, reason=NO_BEAM)
SCHEME = "keras-unet-test"


if kb.beam is not None:
    from apache_beam.io.filesystem import FileMetadata, FileSystem
    from apache_beam.io.localfilesystem import LocalFileSystem

    class FolderFileSystem(FileSystem):
        """`keras-unet-test://a/b`: ROOT/a/b, a filesystem that is not local to keras_unet (as gs:// would be)."""

        ROOT = "/nonexistent"

        def __init__(self, pipeline_options):
            super().__init__(pipeline_options)
            self.local = LocalFileSystem(pipeline_options)

        @classmethod
        def scheme(cls):
            return SCHEME

        def _in(self, path):
            return os.path.join(self.ROOT, path[len(SCHEME) + 3:])

        def _meta(self, m, path=None):
            path = path or f"{SCHEME}://{os.path.relpath(m.path, self.ROOT)}"
            return FileMetadata(path, m.size_in_bytes, m.last_updated_in_seconds)

        def join(self, base, *paths):
            return posixpath.join(base, *paths)

        def split(self, path):
            head, tail = posixpath.split(path[len(SCHEME) + 3:])
            return f"{SCHEME}://{head}", tail

        def has_dirs(self):
            return True

        def _list(self, prefix):
            return (self._meta(m) for m in self.local._list(self._in(prefix)))

        def metadata(self, path):
            return self._meta(self.local.metadata(self._in(path)), path)

        def copy(self, sources, targets):
            self.local.copy([self._in(p) for p in sources], [self._in(p) for p in targets])

        def rename(self, sources, targets):
            self.local.rename([self._in(p) for p in sources], [self._in(p) for p in targets])

        def delete(self, paths):
            self.local.delete([self._in(p) for p in paths])

        def mkdirs(self, path):
            self.local.mkdirs(self._in(path))

        def create(self, path, *args, **kwargs):
            return self.local.create(self._in(path), *args, **kwargs)

        def open(self, path, *args, **kwargs):
            return self.local.open(self._in(path), *args, **kwargs)

        def exists(self, path):
            return self.local.exists(self._in(path))

        def size(self, path):
            return self.local.size(self._in(path))

        def last_updated(self, path):
            return self.local.last_updated(self._in(path))

        def checksum(self, path):
            return self.local.checksum(self._in(path))


def _run(*argv) -> int:
    try:
        return predict_cli.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's usage errors
        return exit_.code


def _sample(folder: Path, stems=STEMS, broken: bool = True) -> Path:
    """Sample images (without their Labelme files, so that --rank scores them) and, optionally, a broken one."""
    folder.mkdir(parents=True)
    for stem in stems:
        shutil.copy(SAMPLE_DIR / f"{stem}.png", folder / f"{stem}.png")
    if broken:
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def _png_names(stems) -> list[str]:
    """The sample images' file names."""
    return [f"{stem}.png" for stem in stems]


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _outputs(out: Path) -> dict:
    """{relative path: bytes} of the masks, overlays and Labelme files predict_image writes (an image's stem)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.stem.startswith("phantom_")}


def _check_figures(rows: list[dict], out: Path, predictor, inputs: Path, ranking: Path) -> None:
    """Every figure against the masks on disk (area, 8-connected parts), the probabilities (mean over the mask)
    and --rank's ranking.csv (uncertainty)."""
    ranked = {Path(r["image"]).name: r for r in _read_csv(ranking)}
    assert len(rows) == len(STEMS) * len(predictor.classes)
    probabilities = {stem: predictor.segment(images.read_image(inputs / f"{stem}.png"))[0] for stem in STEMS}
    for row in rows:
        stem, name = Path(row["image"]).stem, row["class"]
        mask = images.read_image(out / name / f"{stem}.png") > 0
        assert int(row["area_px"]) == int(mask.sum())
        assert int(row["components"]) == ndimage.label(mask, structure=np.ones((3, 3)))[1]
        mean = probabilities[stem][..., predictor.classes.index(name)][mask].mean()
        assert float(row["mean_probability"]) == pytest.approx(mean, abs=1e-6)
        assert row["uncertainty"] == ranked[f"{stem}.png"][name]
        assert row["image_uncertainty"] == ranked[f"{stem}.png"]["score"]


def test_missing_extra_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(kb, "beam", None)
    model = FIXTURE / "export" / "model.tflite"
    assert _run("--runner", "beam", "--model", model, "--input", SAMPLE_DIR, "--out", tmp_path / "o") == 2
    assert capsys.readouterr().err.strip() == f"error: {kb.MISSING}"
    assert not (tmp_path / "o").exists()


def test_runner_flags_are_checked(tmp_path, capsys):
    args = ("--model", FIXTURE / "run", "--input", SAMPLE_DIR, "--out", tmp_path / "o")
    assert _run(*args, "--runner", "spark") == 2
    assert "--runner must be local, beam or a Beam runner's name" in capsys.readouterr().err
    assert _run(*args, "--direct_num_workers=2") == 2  # a pipeline option without Beam is a typo
    assert "unrecognized arguments: --direct_num_workers=2" in capsys.readouterr().err
    assert _run(*args, "--runner", "beam", "--rank") == 2
    assert "--rank runs locally" in capsys.readouterr().err


@needs_beam
def test_inputs_from_a_folder_a_glob_and_a_list_file(tmp_path):
    folder = _sample(tmp_path / "in")
    (folder / "notes.txt").write_text("not an image")
    expected = [str(folder / n) for n in ("broken.png", *(f"{s}.png" for s in STEMS))]
    assert kb.list_inputs(str(folder)) == expected
    assert kb.list_inputs(str(folder / "phantom_*.png")) == expected[1:]
    listed = tmp_path / "list.txt"
    listed.write_text(f"# to segment\nin/phantom_001.png\n\n{folder / 'phantom_000.png'}\nin/gone.png\n")
    assert kb.list_inputs(str(listed)) == [str(tmp_path / "in" / "phantom_001.png"), str(folder / "phantom_000.png"),
                                           str(tmp_path / "in" / "gone.png")]
    with pytest.raises(kb.DataError, match="no image files match"):
        kb.list_inputs(str(folder / "*.jpg"))
    unique, rejected = kb.split_collisions(["a/x.png", "b/x.jpg", "a/y.png"])
    assert unique == ["a/x.png", "a/y.png"] and rejected[0][0] == "b/x.jpg" and "same stem as x.png" in rejected[0][1]


@needs_beam
def test_direct_runner_writes_predict_py_masks_figures_and_errors(tmp_path):
    """In-process DirectRunner, the TFLite export: the same files as predict.py, figures checked by hand."""
    model = FIXTURE / "export" / "model.tflite"
    inputs = _sample(tmp_path / "in")
    predictor = load_predictor(model)
    local = predict_folder(predictor, inputs, tmp_path / "local", labelme=True, progress=False, log=lambda _: None)
    assert _run("--runner", "beam", "--model", model, "--input", inputs, "--out", tmp_path / "beam", "--labelme") == 1
    beam_files, local_files = _outputs(tmp_path / "beam"), _outputs(tmp_path / "local")
    assert len(local_files) == len(STEMS) * (len(predictor.classes) + 2) and local["failed"]
    assert beam_files == local_files  # masks, overlays and Labelme files, byte for byte
    rank_folder(predictor, inputs, tmp_path / "rank", top=0, log=lambda _: None, progress=False)
    _check_figures(_read_csv(tmp_path / "beam" / kb.FIGURES_FILE), tmp_path / "beam", predictor, inputs,
                   tmp_path / "rank" / "ranking.csv")
    errors = _read_csv(tmp_path / "beam" / kb.ERRORS_FILE)
    assert [Path(e["image"]).name for e in errors] == ["broken.png"]
    assert errors[0]["error"].startswith(f"{inputs / 'broken.png'}: truncated PNG file")


@needs_beam
@pytest.mark.slow
def test_two_worker_processes_list_file(tmp_path, monkeypatch):
    """DirectRunner, 2 worker processes (TFLite: the workers import no TensorFlow), a list file naming the images, a
    missing one and one whose stem collides: predict.py's masks, figures by hand, two error rows."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    model = FIXTURE / "export" / "model.tflite"
    inputs = _sample(tmp_path / "in", broken=False)
    other = _sample(tmp_path / "other", stems=STEMS[:1], broken=False)
    listed = tmp_path / "images.txt"
    listed.write_text("\n".join([*(f"in/{s}.png" for s in STEMS), "in/missing.png", "other/phantom_000.png"]) + "\n")
    predictor = load_predictor(model)
    predict_folder(predictor, inputs, tmp_path / "local", progress=False, log=lambda _: None)
    assert _run("--runner", "DirectRunner", "--model", model, "--input", listed, "--out", tmp_path / "beam",
                "--direct_num_workers=2", "--direct_running_mode=multi_processing") == 1
    assert _outputs(tmp_path / "beam") == _outputs(tmp_path / "local")
    rank_folder(predictor, inputs, tmp_path / "rank", top=0, log=lambda _: None, progress=False)
    _check_figures(_read_csv(tmp_path / "beam" / kb.FIGURES_FILE), tmp_path / "beam", predictor, inputs,
                   tmp_path / "rank" / "ranking.csv")
    errors = {Path(e["image"]).parent.name + "/" + Path(e["image"]).name: e["error"]
              for e in _read_csv(tmp_path / "beam" / kb.ERRORS_FILE)}
    assert sorted(errors) == ["in/missing.png", "other/phantom_000.png"]
    assert "not found" in errors["in/missing.png"] or "No such file" in errors["in/missing.png"]
    assert "same stem as phantom_000.png" in errors["other/phantom_000.png"]


@needs_beam
@pytest.mark.slow
@pytest.mark.parametrize("artefact, classes", [("run/model.keras", None), ("export/saved_model", None),
                                               ("export/model.onnx", "left_clavicle,rib")])
def test_other_artefacts_match_predict_py(artefact, classes, tmp_path):
    """model.keras, the SavedModel and the ONNX export (with --classes) through the pipeline (in-process, a glob):
    predict.py's files."""
    model = FIXTURE / artefact
    inputs = _sample(tmp_path / "in", stems=STEMS[:2], broken=False)
    predict_folder(load_predictor(model), inputs, tmp_path / "local", progress=False, log=lambda _: None,
                   classes=classes)
    subset = ("--classes", classes) if classes else ()
    assert _run("--runner", "beam", "--model", model, "--input", inputs / "*.png", "--out", tmp_path / "beam",
                *subset) == 0
    assert _outputs(tmp_path / "beam") == _outputs(tmp_path / "local")
    rows = _read_csv(tmp_path / "beam" / kb.FIGURES_FILE)
    assert sorted({r["class"] for r in rows}) == sorted((classes or "left_clavicle,right_clavicle,rib").split(","))
    assert len(rows) == 2 * (2 if classes else 3)
    assert _read_csv(tmp_path / "beam" / kb.ERRORS_FILE) == []


@needs_beam
@pytest.mark.slow
def test_images_and_outputs_on_another_filesystem(tmp_path, monkeypatch):
    """A list file, its images and --out on a Beam filesystem that is not this machine's: the same masks, staged
    through a temporary folder; the Labelme files name the image by its file name; the CSVs land there too; an
    image that is not there is an errors row."""
    monkeypatch.setattr(FolderFileSystem, "ROOT", str(tmp_path))
    model = FIXTURE / "export" / "model.tflite"
    inputs = _sample(tmp_path / "in", stems=STEMS[:2])
    predict_folder(load_predictor(model), inputs, tmp_path / "local", labelme=True, progress=False, log=lambda _: None)
    listed = ["in/phantom_000.png", "in/phantom_001.png", f"{SCHEME}://in/broken.png", "in/gone.png"]
    (tmp_path / "todo.txt").write_text("\n".join(listed) + "\n")
    assert kb.list_inputs(f"{SCHEME}://in") == [f"{SCHEME}://in/{n}" for n in ("broken.png", *_png_names(STEMS[:2]))]
    assert _run("--runner", "beam", "--model", model, "--input", f"{SCHEME}://todo.txt", "--out", f"{SCHEME}://beam",
                "--labelme") == 1
    beam_files, local_files = _outputs(tmp_path / "beam"), _outputs(tmp_path / "local")
    assert sorted(beam_files) == sorted(local_files)
    for name, data in beam_files.items():
        if name.endswith(".json"):
            assert json.loads(data)["imagePath"] == name.replace(".json", ".png")
            assert json.loads(data)["shapes"] == json.loads(local_files[name])["shapes"]
        else:
            assert data == local_files[name], name
    rows = _read_csv(tmp_path / "beam" / kb.FIGURES_FILE)
    assert sorted({r["image"] for r in rows}) == [f"{SCHEME}://in/{s}.png" for s in STEMS[:2]]
    errors = {e["image"]: e["error"] for e in _read_csv(tmp_path / "beam" / kb.ERRORS_FILE)}
    assert sorted(errors) == [f"{SCHEME}://in/broken.png", f"{SCHEME}://in/gone.png"]
    assert errors[f"{SCHEME}://in/gone.png"].startswith(f"{SCHEME}://in/gone.png: cannot read (")
