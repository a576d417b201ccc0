"""Names that are not regular files (a FIFO, a device, a socket, a folder): refused with one line naming them, at
once, without ever opening them for reading (opening a FIFO that no one writes blocks for ever)."""

import os
import signal
import socket
import time
from contextlib import contextmanager

import pytest

from keras_unet.cli import masks as masks_cli
from keras_unet.config import load_config
from keras_unet.data.samples import prepare_samples
from keras_unet.errors import ConfigError, DataError
from keras_unet.io import images
from keras_unet.io.files import is_file, read_bytes
from labelme_factory import document, gradient, labelme_pair, shape, write_image, write_json

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and Unix sockets are POSIX")
RIB = shape("rib", [[2, 2], [12, 2], [12, 12]])


@contextmanager
def within(seconds: float):
    """Fail the block (rather than hang the suite) when it takes longer than seconds, and check it took less."""
    def expired(signum, frame):
        raise TimeoutError(f"blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds * 5)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - start < seconds


@pytest.fixture()
def special(tmp_path):
    """{kind: path} of a FIFO, a character device, a Unix socket and a folder, each named like an image."""
    folder = tmp_path / "special"
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")
    (folder / "dir.png").mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "sock.png"))
    yield {"fifo": folder / "pipe.png", "device": "/dev/zero", "socket": folder / "sock.png",
           "folder": folder / "dir.png"}
    server.close()


PROBLEMS = {"fifo": "is a FIFO (named pipe), not a regular file", "device": "is a character device, not a regular file",
            "socket": "is a socket, not a regular file", "folder": "is a folder, not an image file"}


@pytest.mark.parametrize("kind", PROBLEMS)
def test_reading_refuses_at_once_naming_the_file(special, kind):
    with within(1.0):
        for read in (read_bytes, images.read_image, lambda p: images.list_images(p)):
            if kind == "folder" and read is not read_bytes and read is not images.read_image:
                continue  # a folder given as input is listed, not read
            with pytest.raises(DataError) as error:
                read(special[kind])
            assert str(error.value) == f"{special[kind]}: {PROBLEMS[kind]}"
        assert not is_file(special[kind])


@pytest.mark.parametrize("kind", PROBLEMS)
def test_an_image_path_naming_one_is_a_line_of_the_masks_command(special, kind, tmp_path, capsys):
    data = tmp_path / "data"
    labelme_pair(data, "good", [RIB])
    write_json(data / "bad.json", document([RIB], str(special[kind]), 20, 30))
    with within(1.0):
        code = masks_cli.main([str(data), "--classes", "rib", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"  {data / 'bad.json'}: {special[kind]}: {PROBLEMS[kind]}" in err.splitlines()


def test_a_fifo_named_like_an_annotation_is_a_line_of_the_masks_command(tmp_path, capsys):
    data = tmp_path / "data"
    labelme_pair(data, "good", [RIB])
    os.mkfifo(data / "pipe.json")
    with within(1.0):
        code = masks_cli.main([str(data), "--classes", "rib", "--out", str(tmp_path / "out")])
    assert code == 2 and f"  {data / 'pipe.json'}: {PROBLEMS['fifo']}" in capsys.readouterr().err.splitlines()


def test_a_fifo_in_an_image_folder_stops_training_preparation_with_one_line(tmp_path):
    data = tmp_path / "data"
    write_image(data / "a.png", gradient(20, 30))
    write_image(data / "masks" / "rib" / "a.png", (gradient(20, 30) > 100).astype("uint8") * 255)
    os.mkfifo(data / "b.png")
    write_image(data / "masks" / "rib" / "b.png", (gradient(20, 30) > 100).astype("uint8") * 255)
    os.mkfifo(data / "noname")  # no image suffix: left out of the listing, never opened to look for 'DICM'
    with within(1.0):
        assert [p.name for p in images.list_images(data)] == ["a.png", "b.png"]
        with pytest.raises(DataError) as error:
            prepare_samples(data, ["rib"], cache_dir=tmp_path / "cache", log=None)
    assert str(error.value) == f"{data / 'b.png'}: {PROBLEMS['fifo']}"


def test_a_config_file_that_is_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "config.yaml")
    with within(1.0), pytest.raises(ConfigError, match="config.yaml: not a regular file, so not a config file"):
        load_config(tmp_path / "config.yaml")


def test_a_link_to_a_regular_file_is_read(tmp_path):
    write_image(tmp_path / "a.png", gradient(20, 30))
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    assert images.read_image(tmp_path / "link.png").shape == (20, 30) and is_file(tmp_path / "link.png")
