"""Shared test settings: quiet TensorFlow, small thread pools, and where the real data lives."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "data" / "sample"
JSRT_DIR = REPO.parent / "shared" / "datasets" / "jsrt-scr-fold1"
