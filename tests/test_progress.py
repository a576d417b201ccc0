"""The progress counter: one complete line per step (or per ~5 %) into a log, `\r` redraws on a terminal, the time
left after the first items."""

import io

import pytest

from keras_unet import progress
from keras_unet.progress import Progress, time_left
from helpers import FakeTerminal


@pytest.fixture
def clock(monkeypatch):
    """time.monotonic in progress.py, moved by hand: clock[0] seconds."""
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    return now


def test_a_log_gets_one_complete_line_per_step_with_the_time_left(clock):
    stream = io.StringIO()
    bar = Progress(4, stream=stream)
    for _ in range(4):
        clock[0] += 10  # 10 s an image
        bar.step()
    bar.close()
    assert "\r" not in stream.getvalue()
    assert stream.getvalue().splitlines(keepends=True) == [
        "1/4 images  (about 30 s left)\n", "2/4 images  (about 20 s left)\n", "3/4 images  (about 10 s left)\n",
        "4/4 images\n"]


def test_a_long_loop_into_a_log_writes_a_line_every_5_percent(clock):
    stream = io.StringIO()
    bar = Progress(1000, stream=stream)
    for _ in range(1000):
        clock[0] += 0.5
        bar.step()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 20 and lines[0] == "50/1000 images  (about 8 min left)" and lines[-1] == "1000/1000 images"
    assert all(line.startswith(f"{50 * (i + 1)}/1000 images") for i, line in enumerate(lines))


def test_say_and_an_early_close_keep_the_log_whole(clock):
    stream = io.StringIO()
    bar = Progress(100, stream=stream)
    clock[0] += 1
    bar.step()  # 1 of 100: no line yet (the first comes at 5)
    bar.say("skipped: broken.png")
    clock[0] += 2
    bar.step(2)
    bar.close()  # stopped early at 3: the last count still written, once
    bar.close()
    assert stream.getvalue() == "skipped: broken.png\n3/100 images  (about 2 min left)\n"


def test_a_terminal_gets_one_line_redrawn_with_the_time_left(clock):
    stream = FakeTerminal()
    bar = Progress(3, stream=stream, unit="artefacts")
    clock[0] += 60
    bar.step()
    clock[0] += 60
    bar.step()  # under 0.25 s after the last redraw would be skipped; a minute is not
    clock[0] += 60
    bar.step()
    bar.close()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    frames = text.rstrip("\n").split("\r")[1:]
    assert frames[0] == "1/3 artefacts  (about 2 min left)"
    assert frames[1] == "2/3 artefacts  (about 1 min left)"
    assert frames[2].rstrip() == "3/3 artefacts" and len(frames[2]) == len(frames[1])  # the longer line blanked


def test_time_left_wording():
    assert [time_left(s) for s in (0.2, 42, 59.4, 61, 7 * 60 + 10, 3600 * 2 + 5 * 60)] == [
        "about 1 s left", "about 42 s left", "about 59 s left", "about 1 min left", "about 7 min left",
        "about 2 h 5 min left"]


def test_clear_blanks_the_terminal_line_and_nothing_in_a_log(clock):
    terminal, log = FakeTerminal(), io.StringIO()
    for stream in (terminal, log):
        bar = Progress(2, stream=stream, unit="artefacts")
        clock[0] += 5
        bar.step()
        bar.clear()  # before another stream (stdout) prints a line
    assert terminal.getvalue() == "\r1/2 artefacts  (about 5 s left)\r" + " " * 31 + "\r"
    assert log.getvalue() == "1/2 artefacts  (about 5 s left)\n"
