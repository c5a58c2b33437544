"""Shared fixtures: the real data in ../shared/data, which CI must have."""

import os
import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; skipped when absent on a user's clone, a failure under CI=true."""
    if not SHARED_DATA.is_dir():
        reason = f"real data folder {SHARED_DATA} is absent"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}, and CI must run the real-data tests")
        pytest.skip(reason)
    return SHARED_DATA


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory) -> Path:
    """A folder for the runs one module shares, removed when the module ends: a training run
    leaves about 300 MB of checkpoints, which would otherwise stay to the end of the session."""
    path = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_run(shared_data, tmp_path_factory) -> Path:
    """A run folder trained for a few steps on real RetinaMNIST (shared by read-only tests)."""
    from drgrade.config import load_config
    from drgrade.fit import train

    config = load_config(None, {
        "data": str(shared_data / "retinamnist/retinamnist.npz"),
        "out": str(tmp_path_factory.mktemp("runs") / "tiny"), "image_size": 28,
        "batch_size": 32, "epochs": 2, "max_train_batches": 4, "optimizer": "adamw",
        "lr": 2e-3, "num_workers": 0, "accelerator": "cpu", "devices": "1",
    })
    return train(config, progress=False)


def write_idrid_csv(path: Path, rows: list[tuple[str, int, str]]) -> None:
    """A label CSV byte for byte in IDRiD's format: 'edema ' with its trailing space, nine
    empty columns on every row, and empty rows at the end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["Image name,Retinopathy grade,Risk of macular edema " + "," * 9]
    lines += [f"{name},{grade},{risk}" + "," * 9 for name, grade, risk in rows]
    lines += ["," * 11] * 3
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def idrid_release(shared_data, tmp_path_factory) -> Path:
    """IDRiD's 'B. Disease Grading' release folder from real photographs: 40 training and
    20 testing images whose names (IDRiD_001..020) repeat training names but are other
    photographs, with label CSVs in IDRiD's exact format."""
    import csv

    from drgrade.data.sources.idrid import IDRID_RELEASE, IDRID_SETS

    real = shared_data / "idrid-train"
    with (real / "train.csv").open(newline="") as handle:
        grades = {r[0]: (int(r[1]), r[2]) for r in list(csv.reader(handle))[1:] if r and r[0]}
    release = tmp_path_factory.mktemp("idrid") / IDRID_RELEASE
    chosen = {"train": [(f"IDRiD_{i:03d}", f"IDRiD_{i:03d}") for i in range(1, 41)],
              "test": [(f"IDRiD_{i:03d}", f"IDRiD_{100 + i:03d}") for i in range(1, 21)]}
    for split, (image_dir, labels) in IDRID_SETS.items():
        (release / image_dir).mkdir(parents=True)
        for name, photograph in chosen[split]:
            os.symlink(real / "images" / f"{photograph}.jpg", release / image_dir / f"{name}.jpg")
        write_idrid_csv(release / labels, [(name, *grades[photo]) for name, photo in chosen[split]])
    return release


@pytest.fixture(scope="session")
def bilevel_png():
    """A maker of decompression bombs: valid all-black 1-bit PNGs of any size, written row by
    row, so 13000x13000 px (1.2 GB as RGB) is about 25 kB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    def make(width: int, height: int) -> bytes:
        packer = zlib.compressobj(9)
        row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed pixels
        data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
        header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                + chunk(b"IEND", b""))

    return make


@pytest.fixture
def one_torch_thread():
    """One torch thread: on a busy 2-core machine extra intra-op threads only contend with
    tiny test models (a GoogLeNet forward took 5 s with 2 threads, 0.04 s with 1)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def eyepacs_release():
    """A maker of Kaggle's EyePACS release layout from synthetic photographs."""
    import shutil

    import pandas as pd

    from drgrade.data.synthetic import write_synthetic_dataset

    def make(root: Path, n_train: int = 12, n_test: int = 8, widths=(64, 96)) -> Path:
        """train/ + trainLabels.csv, and test/ + retinopathy_solution.csv, of synthetic photographs.

        Test patients are numbered from 100000 (Kaggle's test names never repeat training names);
        the first half of them is the Public leaderboard part, the rest Private.
        """
        write_synthetic_dataset(root, n_train, seed=0, widths=widths)
        test = write_synthetic_dataset(root.parent / f"{root.name}-test", n_test, seed=1,
                                       widths=widths)
        (root / "test").mkdir()
        rows = []
        for index, (name, grade) in enumerate(pd.read_csv(test / "trainLabels.csv").values):
            patient, eye = name.split("_")
            kaggle_name = f"{100000 + int(patient)}_{eye}"
            shutil.move(test / "train" / f"{name}.jpeg", root / "test" / f"{kaggle_name}.jpeg")
            rows.append(f"{kaggle_name},{grade},{'Public' if index < n_test // 2 else 'Private'}")
        solution = "image,level,Usage\n" + "\n".join(rows) + "\n"
        (root / "retinopathy_solution.csv").write_text(solution)
        return root

    return make
