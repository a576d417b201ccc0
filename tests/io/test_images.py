"""keras_unet.io.images: every supported file format comes out as one 2-D grayscale array."""

import io
import struct
import zlib

import cv2
import numpy as np
import pytest

from keras_unet.errors import DataError
from keras_unet.io import images
from labelme_factory import gradient, write_image

PIL_Image = pytest.importorskip("PIL.Image")


def _pil_bytes(image, fmt, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_png_8_bit(tmp_path):
    array = gradient()
    out = images.read_image(write_image(tmp_path / "a.png", array))
    assert out.dtype == np.uint8 and out.shape == (20, 30)
    assert np.array_equal(out, array)


def test_png_16_bit_keeps_depth(tmp_path):
    array = gradient(dtype=np.uint16) * 200
    out = images.read_image(write_image(tmp_path / "a.png", array))
    assert out.dtype == np.uint16
    assert np.array_equal(out, array)


def test_jpeg(tmp_path):
    array = np.full((16, 24), 120, dtype=np.uint8)
    out = images.read_image(write_image(tmp_path / "a.jpg", array))
    assert out.shape == (16, 24) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - 120).max() <= 2


def test_tiff_8_16_and_float(tmp_path):
    for array in (gradient(), gradient(dtype=np.uint16) * 100):
        out = images.read_image(write_image(tmp_path / f"a{array.dtype}.tif", array))
        assert out.dtype == array.dtype and np.array_equal(out, array)
    floats = np.linspace(-1, 1, 35, dtype=np.float32).reshape(5, 7)
    path = tmp_path / "f.tiff"
    path.write_bytes(_pil_bytes(PIL_Image.fromarray(floats), "TIFF"))
    out = images.read_image(path)
    assert out.dtype == np.float32 and np.allclose(out, floats)


def test_bmp(tmp_path):
    array = gradient()
    assert np.array_equal(images.read_image(write_image(tmp_path / "a.bmp", array)), array)


def test_rgb_becomes_luminance(tmp_path):
    bgr = np.zeros((4, 5, 3), dtype=np.uint8)
    bgr[..., 2] = 200  # pure red
    out = images.read_image(write_image(tmp_path / "rgb.png", bgr))
    assert out.shape == (4, 5)
    assert np.all(out == cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    assert abs(int(out[0, 0]) - round(0.299 * 200)) <= 1


def test_rgba_drops_alpha(tmp_path):
    bgra = np.zeros((4, 5, 4), dtype=np.uint8)
    bgra[..., :3] = 90
    bgra[..., 3] = 0  # fully transparent: the gray value is still 90
    out = images.read_image(write_image(tmp_path / "rgba.png", bgra))
    assert out.shape == (4, 5) and np.all(out == 90)


def test_gray_alpha_png(tmp_path):
    gray = gradient(6, 7)
    path = tmp_path / "la.png"
    path.write_bytes(_pil_bytes(PIL_Image.fromarray(np.dstack([gray, np.full_like(gray, 10)]), "LA"), "PNG"))
    out = images.read_image(path)
    assert out.shape == (6, 7) and np.array_equal(out, gray)


def test_palette_png_expands_to_palette_colours(tmp_path):
    indices = (np.arange(6 * 8).reshape(6, 8) % 3).astype(np.uint8)
    palette = [0, 0, 0, 255, 255, 255, 100, 100, 100]
    image = PIL_Image.fromarray(indices, "P")
    image.putpalette(palette + [0] * (768 - len(palette)))
    path = tmp_path / "p.png"
    path.write_bytes(_pil_bytes(image, "PNG"))
    out = images.read_image(path)
    expected = np.array([0, 255, 100], dtype=np.uint8)[indices]
    assert out.dtype == np.uint8 and np.array_equal(out, expected)


def test_jpeg_exif_orientation_is_applied(tmp_path):
    exif = PIL_Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_pil_bytes(PIL_Image.fromarray(np.zeros((8, 12), np.uint8)), "JPEG", exif=exif.tobytes()))
    assert images.read_image(path).shape == (12, 8)
    assert images.image_dimensions(path.read_bytes(), path) == (12, 8)


def test_unicode_path(tmp_path):
    path = write_image(tmp_path / "röntgen 画像.png", gradient())
    assert images.read_image(path).shape == (20, 30)


def test_decode_image_from_bytes():
    data = cv2.imencode(".png", gradient())[1].tobytes()
    assert np.array_equal(images.decode_image(data, "mem.png"), gradient())


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".bmp"])
def test_image_size_reads_header(tmp_path, suffix):
    path = write_image(tmp_path / f"a{suffix}", gradient(17, 23))
    assert images.image_dimensions(path.read_bytes(), path) == (17, 23)


def _error(path_or_call, *args) -> str:
    with pytest.raises(DataError) as info:
        path_or_call(*args)
    return str(info.value)


def test_missing_file(tmp_path):
    message = _error(images.read_image, tmp_path / "nope.png")
    assert "nope.png" in message and "not found" in message


def test_folder_is_not_an_image(tmp_path):
    assert "folder" in _error(images.read_image, tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    message = _error(images.read_image, path)
    assert "empty.png" in message and "0 bytes" in message


def test_not_an_image(tmp_path):
    path = tmp_path / "text.png"
    path.write_text("hello, I am text")
    message = _error(images.read_image, path)
    assert "text.png" in message and "not an image" in message


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated(tmp_path, suffix):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    data = write_image(tmp_path / f"full{suffix}", noise).read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    message = _error(images.read_image, path)
    assert f"cut{suffix}" in message and "truncated" in message


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize("width, height", [(20000, 20000), (12000, 9000)])  # past Pillow's bomb guard; past ours only
def test_too_large_refused_from_header(tmp_path, monkeypatch, width, height):
    # A small, well-formed PNG whose header claims more than MAX_PIXELS pixels: refused before any decoding.
    ihdr = struct.pack(">II", width, height) + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(b"\0" * 100)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    path = tmp_path / "huge.png"
    path.write_bytes(data)

    def no_decoding(*args):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(images.cv2, "imdecode", no_decoding)
    for call in (images.read_image, lambda p: images.image_dimensions(p.read_bytes(), p)):
        message = _error(call, path)
        assert "huge.png" in message and "more than the 100,000,000 limit" in message


def test_too_large_refused_after_decode(tmp_path, monkeypatch):
    path = write_image(tmp_path / "a.png", gradient())
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    assert "limit" in _error(images.read_image, path)


def test_write_png_atomic_roundtrip(tmp_path):
    for array in (gradient(), gradient(dtype=np.uint16) * 300):
        path = tmp_path / "sub" / "out.png"
        images.write_png(path, array)
        assert np.array_equal(images.read_image(path), array)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out.png"]  # no temporary files left


def test_write_png_refuses_other_dtypes(tmp_path):
    with pytest.raises(ValueError):
        images.write_png(tmp_path / "f.png", np.zeros((3, 3), np.float32))
    assert not list(tmp_path.iterdir())


def test_is_gray_png(tmp_path):
    assert images.is_gray_png(write_image(tmp_path / "g.png", gradient()).read_bytes())
    assert images.is_gray_png(write_image(tmp_path / "g16.png", gradient(dtype=np.uint16)).read_bytes())
    assert not images.is_gray_png(write_image(tmp_path / "c.png", np.zeros((3, 3, 3), np.uint8)).read_bytes())
    assert not images.is_gray_png(write_image(tmp_path / "j.jpg", gradient()).read_bytes())
