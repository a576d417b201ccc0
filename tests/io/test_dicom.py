"""DICOM in: LUTs, inversion, spacing and clear errors (keras_unet.io.dicom), and every command reading .dcm files."""

import csv
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless

from conftest import REPO
from helpers import CLASSES, blob_run, blob_scene, write_dicom  # noqa: F401 (fixtures)
from keras_unet.cli import evaluate as evaluate_cli
from keras_unet.cli import masks as masks_cli
from keras_unet.cli import predict as predict_cli
from keras_unet.data.samples import prepare_samples
from keras_unet.errors import DataError
from keras_unet.io import dicom, images, labelme
from labelme_factory import document, shape, write_image, write_json

STORED = np.array([[0, 500], [1000, 1500]], np.uint16)
# slope 2, intercept -1000: modality values -1000, 0, 1000, 2000; the LINEAR window centre 500.5, width 2001 maps
# x to (x - 500) / 2000 + 0.5, clipped: 0, 0.25, 0.75, 1 -> x 65535, rounded
WINDOWED = np.array([[0, 16384], [49151, 65535]], np.uint16)
WINDOW = dict(RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=500.5, WindowWidth=2001)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_UNET_CACHE", str(tmp_path / "cache"))


def _problem(path) -> str:
    with pytest.raises(DataError) as caught:
        images.read_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return caught.value.problem


# -- pixel values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [12, 16])
def test_slope_intercept_and_window_by_hand(tmp_path, bits):
    path = write_dicom(tmp_path / "a.dcm", STORED, bits_stored=bits, **WINDOW)
    image = images.read_image(path)
    assert image.dtype == np.uint16 and image.shape == (2, 2)
    np.testing.assert_array_equal(image, WINDOWED)


def test_monochrome1_is_inverted_so_bone_is_bright(tmp_path):
    path = write_dicom(tmp_path / "m1.dcm", STORED, photometric="MONOCHROME1", bits_stored=12, **WINDOW)
    np.testing.assert_array_equal(images.read_image(path), 65535 - WINDOWED)
    plain = write_dicom(tmp_path / "plain.dcm", np.array([[0, 4095]], np.uint16), "MONOCHROME1", bits_stored=12)
    np.testing.assert_array_equal(images.read_image(plain), [[65535, 0]])  # low stored value = white = bone


def test_first_of_several_windows_is_used(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", STORED, **{**WINDOW, "WindowCenter": [500.5, 7], "WindowWidth": [2001, 3]})
    np.testing.assert_array_equal(images.read_image(path), WINDOWED)


def test_linear_exact_and_linear_threshold_windows():
    x = np.array([-1.0, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(dicom.apply_window(x, 0.5, 2.0, "LINEAR_EXACT"), [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(dicom.apply_window(x, 0.5, 1.0), [0, 0, 1, 1])  # LINEAR, width 1: a threshold


# SIGMOID (PS3.3 C.11.2.1.3.1): y = 1 / (1 + exp(-4 (x - c) / w)) on 0..1. At x = c - w, c - w/2, c, c + w/2, c + w
# the exponent is 4, 2, 0, -2, -4: y = 1/(1 + e^4), 1/(1 + e^2), 1/2, 1/(1 + e^-2), 1/(1 + e^-4)
SIGMOID_AT = [0.0179862100, 0.1192029220, 0.5, 0.8807970780, 0.9820137900]


def test_sigmoid_window_by_hand():
    x = np.array([60.0, 80.0, 100.0, 120.0, 140.0])  # centre 100, width 40
    np.testing.assert_allclose(dicom.apply_window(x, 100.0, 40.0, "SIGMOID"), SIGMOID_AT, atol=1e-9)


def test_sigmoid_window_in_a_file(tmp_path):
    # stored 800, 1000, 1200, 1400 with slope 2, intercept -1000: modality 600, 1000, 1400, 1800; centre 1000,
    # width 800: c - w/2, c, c + w/2, c + w -> 0.119203, 0.5, 0.880797, 0.982014 -> x 65535 rounded
    stored = np.array([[800, 1000], [1200, 1400]], np.uint16)
    path = write_dicom(tmp_path / "s.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000,
                       WindowWidth=800, VOILUTFunction="SIGMOID")
    np.testing.assert_array_equal(images.read_image(path), [[7812, 32768], [57723, 64356]])


def test_without_window_the_full_range_is_used(tmp_path):
    sixteen = np.array([[0, 1000], [30000, 65535]], np.uint16)
    np.testing.assert_array_equal(images.read_image(write_dicom(tmp_path / "16.dcm", sixteen)), sixteen)
    twelve = np.array([[100, 1465], [2830, 4095]], np.uint16)  # min 100 -> 0, max 4095 -> 65535
    expected = np.round((twelve.astype(float) - 100) / 3995 * 65535).astype(np.uint16)
    image = images.read_image(write_dicom(tmp_path / "12.dcm", twelve, bits_stored=12))
    np.testing.assert_array_equal(image, expected)


def test_unused_high_bits_of_12_bit_storage_are_ignored(tmp_path):
    clean = write_dicom(tmp_path / "clean.dcm", STORED, bits_stored=12, **WINDOW)
    dirty = write_dicom(tmp_path / "dirty.dcm", STORED | np.uint16(0xF000), bits_stored=12, **WINDOW)
    np.testing.assert_array_equal(images.read_image(dirty), images.read_image(clean))


def test_signed_pixels(tmp_path):
    signed = np.array([[-1000, 0], [1000, 2000]], np.int16)
    path = write_dicom(tmp_path / "s.dcm", signed, bits_stored=12, WindowCenter=500.5, WindowWidth=2001)
    np.testing.assert_array_equal(images.read_image(path), WINDOWED)


def test_modality_and_voi_lut_sequences(tmp_path):
    from pydicom.dataset import Dataset

    def lut(data):
        item = Dataset()
        item.LUTDescriptor = [len(data), 0, 16]
        item.add_new("LUTData", "US", data)
        return item

    stored = np.array([[0, 1], [2, 3]], np.uint16)
    modality = write_dicom(tmp_path / "m.dcm", stored, ModalityLUTSequence=[lut([10, 20, 30, 40])],
                           RescaleSlope=5, RescaleIntercept=5)  # the LUT sequence wins over slope/intercept
    np.testing.assert_array_equal(images.read_image(modality), [[0, 21845], [43690, 65535]])
    voi = write_dicom(tmp_path / "v.dcm", np.array([[0, 1], [2, 9]], np.uint16), WindowCenter=1, WindowWidth=1,
                      VOILUTSequence=[lut([0, 1000, 30000, 65535])])  # the LUT sequence wins over the window
    np.testing.assert_array_equal(images.read_image(voi), [[0, 1000], [30000, 65535]])  # 9: past the end, clipped


# -- spacing, sizes, listing --------------------------------------------------------------------------------


def test_pixel_spacing_row_then_column(tmp_path):
    pixel = write_dicom(tmp_path / "p.dcm", STORED, PixelSpacing=[0.2, 0.3], ImagerPixelSpacing=[0.5, 0.5])
    imager = write_dicom(tmp_path / "i.dcm", STORED, ImagerPixelSpacing=[0.15, 0.25])
    none = write_dicom(tmp_path / "n.dcm", STORED)
    assert images.read_spacing(pixel) == (0.2, 0.3)
    assert images.read_spacing(imager) == (0.15, 0.25)
    assert images.read_spacing(none) is None
    assert images.read_spacing(pixel.read_bytes()) == (0.2, 0.3)
    png = write_image(tmp_path / "x.png", STORED)
    assert images.read_spacing(png) is None and images.read_spacing(png.read_bytes()) is None


def test_size_listing_and_labelme_size_from_the_dicom(tmp_path):
    folder = tmp_path / "in"
    write_dicom(folder / "a.dcm", np.zeros((20, 30), np.uint16))
    write_dicom(folder / "1.2.840.99", np.zeros((4, 5), np.uint16))  # a DICOM named as scanners name them
    write_image(folder / "b.png", np.zeros((3, 3), np.uint8))
    (folder / "notes.txt").write_text("not an image")
    assert [p.name for p in images.list_images(folder)] == ["1.2.840.99", "a.dcm", "b.png"]
    data = (folder / "a.dcm").read_bytes()
    assert images.image_dimensions(data, folder / "a.dcm") == (20, 30)
    undeclared = document([shape("rib", [[1, 1], [9, 1], [9, 9]])], "a.dcm", height=None, width=None)
    annotation = labelme.read_labelme(write_json(folder / "a.json", undeclared))
    assert (annotation.height, annotation.width) == (20, 30)
    assert labelme.load_image(annotation).shape == (20, 30)
    embedded = document([shape("rib", [[1, 1], [9, 1], [9, 9]])], None, height=None, width=None, image_data=data)
    annotation = labelme.read_labelme(write_json(tmp_path / "embedded.json", embedded))
    assert (annotation.height, annotation.width) == (20, 30) and labelme.load_image(annotation).dtype == np.uint16
    wrong = write_json(folder / "w.json", document([shape("rib", [[1, 1], [9, 1], [9, 9]])], "a.dcm", 20, 31))
    with pytest.raises(DataError, match="image is 30x20 but the annotation says 31x20"):
        labelme.check_image_size(labelme.read_labelme(wrong))


# -- errors -------------------------------------------------------------------------------------------------


def test_compressed_transfer_syntax_without_a_decoder_is_refused(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "j2k.dcm", STORED, transfer_syntax=JPEG2000Lossless,
                       pixel_data=encapsulate([b"\x00\x01\x02\x03" * 4]))
    # whether or not a JPEG 2000 plugin is installed here, the error names the transfer syntax on one line
    problem = _problem(path)
    assert "JPEG 2000 Image Compression (Lossless Only) (1.2.840.10008.1.2.4.90)" in problem

    class Unavailable:
        is_available = False

    monkeypatch.setattr("pydicom.pixels.get_decoder", lambda uid: Unavailable())
    assert _problem(path) == ("JPEG 2000 Image Compression (Lossless Only) (1.2.840.10008.1.2.4.90) cannot be "
                              "decoded here: install pylibjpeg-openjpeg or convert to uncompressed")


def test_compressed_pixel_data_that_fails_to_decode_is_one_line(tmp_path):
    from pydicom.pixels import get_decoder

    if not get_decoder(JPEGBaseline8Bit).is_available:
        pytest.skip("no JPEG baseline decoder here (pydicom decodes it with Pillow)")
    # the transfer syntax says JPEG baseline and a decoder is installed, but the fragment is no JPEG: a start of
    # image marker and then zeros
    path = write_dicom(tmp_path / "broken.dcm", np.zeros((2, 2), np.uint8), transfer_syntax=JPEGBaseline8Bit,
                       pixel_data=encapsulate([b"\xff\xd8" + b"\x00" * 14]),
                       BitsAllocated=8, BitsStored=8, HighBit=7)
    problem = _problem(path)  # one line, starting with the file's path
    prefix = "JPEG Baseline (Process 1) (1.2.840.10008.1.2.4.50) pixel data cannot be decoded ("
    assert problem.startswith(prefix) and problem.endswith(")") and len(problem) > len(prefix) + 1, problem
    assert "Traceback" not in problem


def test_jpeg_ls_without_its_plugin_is_refused(tmp_path):
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    path = write_dicom(tmp_path / "jls.dcm", STORED, transfer_syntax=JPEGLSLossless,
                       pixel_data=encapsulate([b"\xff\xd8" + b"\x00" * 14]))
    assert _problem(path) == ("JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80) cannot be decoded here: "
                              "install pylibjpeg-libjpeg or convert to uncompressed")


def test_files_that_are_not_dicom_images(tmp_path):
    text = tmp_path / "text.dcm"
    text.write_text("patient notes, not an image\n" * 10)
    assert _problem(text) == "not a DICOM file (no 'DICM' marker at byte 128)"
    png = write_image(tmp_path / "scan.png", STORED)
    renamed = tmp_path / "scan.dcm"
    renamed.write_bytes(png.read_bytes())
    assert _problem(renamed) == "not a DICOM file (no 'DICM' marker at byte 128)"
    assert "0 bytes" in _problem(_empty(tmp_path / "empty.dcm"))


def _empty(path):
    path.write_bytes(b"")
    return path


def test_no_pixel_data_multi_frame_and_colour_are_refused(tmp_path):
    from pydicom import dcmread

    report = write_dicom(tmp_path / "sr.dcm", STORED)
    ds = dcmread(report)
    del ds.PixelData
    ds.save_as(report, enforce_file_format=True)
    assert _problem(report) == ("DICOM file has no pixel data (no PixelData element; "
                                "SOP class Digital X-Ray Image Storage - For Presentation)")
    frames = write_dicom(tmp_path / "cine.dcm", np.zeros((6, 2), np.uint16), NumberOfFrames=3, Rows=2)
    assert _problem(frames) == "multi-frame DICOM (3 frames); only single-frame images can be read"
    colour = write_dicom(tmp_path / "rgb.dcm", np.zeros((2, 6), np.uint16), "RGB", SamplesPerPixel=3, Columns=2)
    assert _problem(colour) == ("colour DICOM (RGB, 3 samples per pixel); "
                                "only grayscale MONOCHROME1/MONOCHROME2 images can be read")


def test_bad_dicom_named_by_labelme_is_listed_by_the_mask_generator(tmp_path, capsys):
    folder = tmp_path / "data"
    rib = [shape("rib", [[1, 1], [9, 1], [9, 9]])]
    write_dicom(folder / "good.dcm", np.zeros((20, 30), np.uint16))
    write_json(folder / "good.json", document(rib, "good.dcm"))
    (folder / "bad.dcm").write_text("not dicom")
    write_json(folder / "bad.json", document(rib, "bad.dcm"))
    assert masks_cli.main([str(folder), "--classes", "rib", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"  {folder / 'bad.json'}: {folder / 'bad.dcm'}: not a DICOM file (no 'DICM' marker at byte 128)" in err
    assert masks_cli.main([str(folder), "--classes", "rib", "--out", str(tmp_path / "out"), "--skip-bad"]) == 0
    assert (tmp_path / "out" / "rib" / "good.png").is_file()


def test_the_library_imports_and_reads_pngs_without_pydicom(tmp_path):
    png = write_image(tmp_path / "x.png", STORED)
    write_dicom(tmp_path / "x.dcm", STORED)
    code = ("import sys; sys.modules['pydicom'] = None\n"
            "from keras_unet.io import images\n"
            "from keras_unet.errors import DataError\n"
            f"assert images.read_image({str(png)!r}).shape == (2, 2)\n"
            "try:\n"
            f"    images.read_image({str(tmp_path / 'x.dcm')!r})\n"
            "except DataError as error:\n"
            "    print(error.problem)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "reading DICOM files needs pydicom: pip install pydicom"


def test_bad_dicom_in_predict_is_one_line(blob_run, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "in"
    write_dicom(folder / "good.dcm", blob_scene(np.random.default_rng(0), 40, 40)[0].astype(np.uint16))
    (folder / "bad.dcm").write_text("not dicom")
    assert predict_cli.main(["--model", str(blob_run), "--input", str(folder), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"skipped: {folder / 'bad.dcm'}: not a DICOM file (no 'DICM' marker at byte 128)" in err
    assert "Traceback" not in err and (tmp_path / "o" / "rib" / "good.png").is_file()


# -- the same scene as DICOM and as PNG, through every command -----------------------------------------------


def scene_as_dicom(path, scene: np.ndarray, **elements):
    """A uint8 scene as a 12-bit MONOCHROME1 DICOM (slope, LINEAR_EXACT window) that decodes to scene * 257."""
    stored = (4095 - 16 * scene.astype(np.uint16)).astype(np.uint16)  # 12 bits, dark = bright bone
    # modality m = 16.0625 stored = 65775.9375 - 257 scene; the window maps m - 240.9375 onto 0..65535
    return write_dicom(path, stored, "MONOCHROME1", bits_stored=12, RescaleSlope="16.0625", RescaleIntercept=0,
                       WindowCenter="33008.4375", WindowWidth=65535, VOILUTFunction="LINEAR_EXACT", **elements)


def _scenes(root, count=3, **elements):
    """Labelme folders of the same blob scenes: images as 16-bit PNG (png/) and as DICOM (dcm/)."""
    rng = np.random.default_rng(5)
    for i, (h, w) in enumerate([(72, 100), (90, 60), (64, 64), (80, 70)][:count]):
        scene, truth = blob_scene(rng, h, w)
        stem = f"scene_{i}"
        shapes = [shape(name, _polygon(truth[..., c])) for c, name in enumerate(CLASSES) if truth[..., c].any()]
        write_image(root / "png" / f"{stem}.png", scene.astype(np.uint16) * np.uint16(257))
        write_json(root / "png" / f"{stem}.json", document(shapes, f"{stem}.png", h, w))
        scene_as_dicom(root / "dcm" / f"{stem}.dcm", scene, **elements)
        write_json(root / "dcm" / f"{stem}.json", document(shapes, f"{stem}.dcm", h, w))
    return root / "png", root / "dcm"


def _polygon(mask):
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return max(contours, key=cv2.contourArea).reshape(-1, 2).astype(float).tolist()


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_scene_dicom_decodes_to_the_png(tmp_path):
    png, dcm = _scenes(tmp_path, count=1)
    np.testing.assert_array_equal(images.read_image(dcm / "scene_0.dcm"), images.read_image(png / "scene_0.png"))


def test_mask_generator_gives_identical_masks(tmp_path):
    png, dcm = _scenes(tmp_path)
    for folder in (png, dcm):
        out = tmp_path / f"masks_{folder.name}"
        assert masks_cli.main([str(folder), "--classes", ",".join(CLASSES), "--out", str(out)]) == 0
    from_png, from_dcm = _files(tmp_path / "masks_png"), _files(tmp_path / "masks_dcm")
    assert len(from_png) == 9 and from_png == from_dcm


def test_predict_gives_identical_masks_and_labelme_files(blob_run, tmp_path):  # noqa: F811
    png, dcm = _scenes(tmp_path)
    for folder in (png, dcm):
        argv = ["--model", str(blob_run), "--input", str(folder), "--out", str(tmp_path / f"out_{folder.name}"),
                "--labelme"]
        assert predict_cli.main(argv) == 0
    from_png, from_dcm = _files(tmp_path / "out_png"), _files(tmp_path / "out_dcm")
    copies = [{name: found.pop(name) for name in list(found) if "/" not in name} for found in (from_png, from_dcm)]
    assert len(from_png) == 12 and from_png == from_dcm  # 3 classes + overlays, 3 images
    assert sorted(copies[0]) == ["scene_0.png", "scene_1.png", "scene_2.png"] and copies[0] == copies[1]  # 8-bit
    annotation = labelme.read_labelme(tmp_path / "out_dcm" / "scene_0.json")
    assert annotation.image_path.name == "scene_0.dcm" and (annotation.height, annotation.width) == (72, 100)
    assert json.loads((tmp_path / "out_dcm" / "scene_0.json").read_text())["imagePath"] == "scene_0.png"


def test_evaluate_uses_the_dicom_spacing_and_the_option_overrides_it(blob_run, tmp_path, capsys):  # noqa: F811
    png, dcm = _scenes(tmp_path, PixelSpacing=[0.5, 0.25])
    common = ["--model", str(blob_run), "--no-tta"]
    assert evaluate_cli.main([*common, "--data", str(png), "--out", str(tmp_path / "p"), "--spacing", "0.5,0.25"]) == 0
    assert evaluate_cli.main([*common, "--data", str(dcm), "--out", str(tmp_path / "d")]) == 0
    assert "HD95 mm" in capsys.readouterr().out
    rows_png, rows_dcm = _csv(tmp_path / "p" / "metrics.csv"), _csv(tmp_path / "d" / "metrics.csv")
    assert len(rows_png) == 9 and [list(r) for r in rows_png] == [list(r) for r in rows_dcm]
    assert "hd95_mm" in rows_dcm[0]
    for a, b in zip(rows_png, rows_dcm):
        assert (a["image"], a["class"]) == (b["image"], b["class"])
        assert {k: float(v) for k, v in a.items() if k not in ("image", "class")} == pytest.approx(
            {k: float(v) for k, v in b.items() if k not in ("image", "class")}, rel=1e-6)
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["settings"]["spacing_mm"] == [0.5, 0.25] and summary["settings"]["spacing_from"] == "DICOM"
    assert "spacing 0.5 x 0.25 mm (from the DICOM files)" in (tmp_path / "d" / "report.md").read_text()

    assert evaluate_cli.main([*common, "--data", str(dcm), "--out", str(tmp_path / "o"), "--spacing", "1"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["settings"]["spacing_mm"] == [1.0, 1.0] and summary["settings"]["spacing_from"] == "--spacing"
    rows = _csv(tmp_path / "o" / "metrics.csv")
    finite = [r for r in rows if float(r["hd95"]) < float("inf")]
    assert finite and all(float(r["hd95_mm"]) == pytest.approx(float(r["hd95"])) for r in finite)

    assert evaluate_cli.main([*common, "--data", str(png), "--out", str(tmp_path / "n")]) == 0
    assert "hd95_mm" not in _csv(tmp_path / "n" / "metrics.csv")[0]  # PNGs without --spacing: pixels only


def test_cache_follows_a_changed_dicom(tmp_path):
    _, dcm = _scenes(tmp_path, count=2, PixelSpacing=[0.5, 0.5])
    lines = []
    first = prepare_samples(dcm, CLASSES, log=lines.append)
    assert [s.spacing for s in first] == [(0.5, 0.5)] * 2 and "2 regenerated" in lines[-1]
    cached = images.read_image(first[0].image_path)
    assert cached.dtype == np.uint16 and first[0].image_path.suffix == ".png"
    np.testing.assert_array_equal(cached, images.read_image(dcm / "scene_0.dcm"))
    again = prepare_samples(dcm, CLASSES, log=lines.append)
    assert "0 regenerated" in lines[-1] and [s.spacing for s in again] == [(0.5, 0.5)] * 2
    scene = np.full((72, 100), 40, np.uint8)
    scene[0, 0] = 200
    scene_as_dicom(dcm / "scene_0.dcm", scene, PixelSpacing=[0.3, 0.2])
    changed = prepare_samples(dcm, CLASSES, log=lines.append)
    assert "1 regenerated" in lines[-1] and changed[0].spacing == (0.3, 0.2) and changed[1].spacing == (0.5, 0.5)
    np.testing.assert_array_equal(images.read_image(changed[0].image_path), scene.astype(np.uint16) * 257)


def test_image_and_mask_folder_with_dicom_images(tmp_path):
    folder = tmp_path / "masked"
    scene, truth = blob_scene(np.random.default_rng(3), 50, 40)
    scene_as_dicom(folder / "scan.dcm", scene, ImagerPixelSpacing=[0.2, 0.2])
    for c, name in enumerate(CLASSES):
        write_image(folder / "masks" / name / "scan.png", truth[..., c] * np.uint8(255))
    (sample,) = prepare_samples(folder, CLASSES, log=None)
    assert sample.spacing == (0.2, 0.2) and sample.image_path.suffix == ".png"
    np.testing.assert_array_equal(images.read_image(sample.image_path), scene.astype(np.uint16) * 257)


def test_labelme_naming_a_dicom_trains_one_epoch(tmp_path):
    from keras_unet.config import Config, merge
    from keras_unet.train.run import train

    _, dcm = _scenes(tmp_path, count=4)
    config = merge(Config(data=str(dcm), out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                          classes=list(CLASSES), image_size=32, batch_size=2, epochs=1, val_fraction=0.25),
                   {"model.depth": 1, "model.base_filters": 2, "augment.enabled": False})
    result = train(config, log=lambda *a: None)
    assert result["epochs_run"] == 1 and (tmp_path / "run" / "model.keras").is_file()
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["train"]) == 3 and len(split["val"]) == 1
