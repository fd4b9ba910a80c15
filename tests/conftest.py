"""Shared fixtures: the toolbox's real files (via LRPFLOW_SHARED, default ../shared) and backends."""
from __future__ import annotations

import os
import pathlib

import numpy
import pytest

from lrpflow.backend import cupy_available

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("LRPFLOW_SHARED", REPO.parent / "shared"))

BACKENDS = [
    "numpy",
    pytest.param("cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(not cupy_available(), reason="needs cupy and a GPU")]),
]


@pytest.fixture(scope="session")
def shared() -> pathlib.Path:
    """The shared folder with the toolbox's models and MNIST (skip if absent)."""
    if not (SHARED / "models").is_dir():
        if os.environ.get("CI"):  # CI has ../shared beside the checkout: never skip there
            pytest.fail(f"shared files not found at {SHARED} (set LRPFLOW_SHARED)")
        pytest.skip(f"shared files not found at {SHARED} (set LRPFLOW_SHARED)")
    return SHARED


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each test body runs on numpy and (with a GPU) on cupy."""
    return request.param


@pytest.fixture
def xp(backend: str):
    from lrpflow.backend import namespace

    return namespace(backend)


@pytest.fixture
def rng() -> numpy.random.Generator:
    return numpy.random.default_rng(12345)


@pytest.fixture(scope="session")
def mnist(shared: pathlib.Path):
    """The 10 000 MNIST test images as the toolbox demo prepares them (N, 32, 32, 1) float64, and labels."""
    from scipy.io import loadmat

    data = loadmat(str(shared / "data" / "MNIST" / "test_images.mat"))["data"].astype(numpy.float64)
    x = data / 127.5 - 1.0
    x = x.reshape(-1, 28, 28, 1)
    x = numpy.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)
    labels = numpy.load(shared / "data" / "MNIST" / "test_labels.npy").ravel().astype(numpy.int64)
    return x, labels
