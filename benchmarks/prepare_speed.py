"""Speed of `prepare` and of loading its cache, on the 20 full-size IDRiD photographs.

    .venv/bin/python benchmarks/prepare_speed.py [--data ../shared/data] [--size 512]

Four figures, images per second of one process with one thread, best of --repeat
interleaved runs (as timeit takes the best: other work on the machine only slows a run
down). Rates are per CPU second of this process, which a shared machine disturbs far less
than wall-clock time; wall-clock rates are printed beside them.
  prepare       prepare_dataset(workers=1): draft decode, find the disc, crop, resize, write
  naive         PIL open + convert("RGB") + resize to size, no draft (the full decode)
  cached load   ManifestDataset + ToTensor over the prepared folder
  raw load      ManifestDataset + Resize + ToTensor over the photographs themselves
Targets: prepare >= 4x naive; cached load >= 100x raw load.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import PIL
from PIL import Image, features

from drgrade.data.dataset import ManifestDataset
from drgrade.data.prepare import prepare_dataset
from drgrade.data.sources import read_prepared, read_source

ROOT = Path(__file__).resolve().parents[1]


def timed(run: Callable[[], int]) -> tuple[float, float]:
    """Images per CPU second and per wall-clock second of one call of `run`."""
    cpu, wall = time.process_time(), time.perf_counter()
    count = run()
    return count / (time.process_time() - cpu), count / (time.perf_counter() - wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folder = args.data / "idrid-train"
    raw = read_source(folder / "fullres", "idrid", labels=folder / "train.csv")
    raw = raw.require_images(allow_missing=True)
    with tempfile.TemporaryDirectory(prefix="prepare-speed-") as scratch:
        measure(raw, Path(scratch), args.size, args.repeat)


def measure(raw, scratch: Path, size: int, repeat: int) -> None:
    """Print the four rates as a Markdown table."""
    import torch
    from torchvision.transforms import Compose, Resize, ToTensor

    # One core, as in a DataLoader worker (which torch also limits to one thread); several
    # intra-op threads only fight over a busy machine's cores.
    torch.set_num_threads(1)

    paths = list(raw.table["path"])
    runs = iter(range(repeat))  # a fresh folder per run: nothing skipped

    def prepare() -> int:
        result = prepare_dataset(raw, scratch / f"run{next(runs)}", size=size, workers=1)
        return result.written

    def naive() -> int:
        for path in paths:
            Image.open(path).convert("RGB").resize((size, size))
        return len(paths)

    prepare_dataset(raw, scratch / "cache", size=size, workers=1)
    prepared = read_prepared(scratch / "cache", None, None)
    cached_set = ManifestDataset(prepared.table, transform=ToTensor())
    raw_set = ManifestDataset(raw.table, transform=Compose([Resize((size, size)),
                                                             ToTensor()]))

    def load(dataset: ManifestDataset, passes: int) -> Callable[[], int]:
        def run() -> int:
            for _ in range(passes):
                for index in range(len(dataset)):
                    dataset[index]
            return passes * len(dataset)
        return run

    measures = {"prepare": prepare, "naive": naive, "cached": load(cached_set, 10),
                "raw": load(raw_set, 1)}
    cpu: dict[str, float] = dict.fromkeys(measures, 0.0)
    wall: dict[str, float] = dict.fromkeys(measures, 0.0)
    for _ in range(repeat):  # interleaved, so every measure meets the same machine load
        for name, run in measures.items():
            per_cpu, per_wall = timed(run)
            cpu[name], wall[name] = max(cpu[name], per_cpu), max(wall[name], per_wall)
    print(f"{len(paths)} IDRiD photographs 4288x2848 -> {size} px, one process; "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"Pillow {PIL.__version__} (libjpeg-turbo {features.version('jpg')})")
    rows = [
        ("prepare (workers=1)", "prepare", f"{cpu['prepare'] / cpu['naive']:.1f}x naive"),
        ("naive full decode + resize", "naive", "1x"),
        ("cached load (ManifestDataset + ToTensor)", "cached",
         f"{cpu['cached'] / cpu['raw']:.0f}x raw"),
        ("raw load (ManifestDataset + Resize + ToTensor)", "raw", "1x"),
    ]
    print("| what | images per CPU s | ratio | images per wall s |\n|---|---:|---:|---:|")
    for label, name, ratio in rows:
        print(f"| {label} | {cpu[name]:.1f} | {ratio} | {wall[name]:.1f} |")

if __name__ == "__main__":
    main()
