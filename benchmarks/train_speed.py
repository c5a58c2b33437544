"""Training throughput of drgrade's train() against a minimal plain-PyTorch loop.

    .venv/bin/python benchmarks/train_speed.py [--sizes 128 224] [--batch-size 32] [--repeat 3]

Same model (torchvision resnet18, 5 outputs, from scratch, channels_last), batch size,
optimiser (AdamW), threads, DataLoader workers and images (one prepared JPEG folder per
size, made here from 200 synthetic photographs and listed enough times for one long
epoch). The loops, interleaved, each run --repeat times:

  drgrade      train() itself: Lightning Trainer, GradingModule, GradingDataModule
               (EpochSampler, per-image augmentation seeds, v2 transforms), train metrics
  plain        for images, grades in DataLoader(plain JPEG dataset, shuffle=True):
               forward, cross-entropy, zero_grad, backward, step (flips, to tensor,
               normalise: the same augmentation as the drgrade config)
  plain+dgdata the plain loop over drgrade's own train DataLoader (separates the cost of
               drgrade's data pipeline from that of its training loop)
  plain-nchw   the plain loop without channels_last (what channels_last is worth)

Rates are images per second over batches --warmup+1 .. --warmup+--batches of one epoch
(steady state: start-up, worker spawn and the first batches are excluded; each batch is
timed from the end of one optimiser step to the end of the next, data loading included),
per wall-clock second and, with --workers 0 (all work in this process), per CPU second of
this process. The default, one torch thread and no workers, makes the CPU rate a stable
measure on a shared machine; with two threads OpenMP's threads wait on each other whenever
another process takes a core, and wall-clock rates swing several-fold. The best of
--repeat runs is the figure (as timeit takes the best: other work on a shared machine only
slows a run down); the spread is min-max.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

import lightning as L
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

import drgrade.fit as fit
from drgrade.config import load_config
from drgrade.data.datamodule import GradingDataModule
from drgrade.data.manifest import assign_splits
from drgrade.data.prepare import prepare_dataset
from drgrade.data.sources import read_source
from drgrade.data.synthetic import write_synthetic_dataset

LR, WEIGHT_DECAY = 1e-3, 0.05
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # drgrade's "lab" scaling when not pretrained
LOOPS = ("drgrade", "plain", "plain+dgdata", "plain-nchw")


# ----------------------------------------------------------------------------- data


def prepared_folder(scratch: Path, size: int, photos: int) -> Path:
    """A `drgrade prepare` folder of `photos` synthetic photographs at `size` px (cached)."""
    photographs = scratch / "photographs"
    if not (photographs / "trainLabels.csv").is_file():
        write_synthetic_dataset(photographs, photos, seed=0)
    folder = scratch / f"prepared-{size}"
    manifest = read_source(photographs).require_images()
    manifest.table = assign_splits(manifest.table, 0.1, 0.2, 0)
    prepare_dataset(manifest, folder, size=size, workers=os.cpu_count())
    return folder


def bench_folder(prepared: Path, scratch: Path, images_needed: int) -> Path:
    """A prepared folder listing `prepared`'s images enough times for one long train epoch.

    Every train row is a real JPEG on disk (the same files repeated under new ids), so each
    loop decodes every image it trains on; 16 images form the val split train() requires.
    """
    table = read_source(prepared, "prepared").table
    val = table.iloc[:16].assign(split="val")
    rest = table.iloc[16:]
    copies = -(-images_needed // len(rest))
    train = pd.concat([rest.assign(image_id=rest["image_id"] + f"~{k}",
                                   patient=rest["patient"] + f"~{k}", split="train")
                       for k in range(copies)])
    folder = scratch / f"bench-{prepared.name}"
    folder.mkdir(parents=True, exist_ok=True)
    pd.concat([val, train])[["image_id", "path", "grade", "patient", "eye", "split"]].to_csv(
        folder / "manifest.csv", index=False)  # absolute paths: they resolve as they are
    shutil.copy(prepared / "prepare.json", folder / "prepare.json")
    return folder


class PlainImages(Dataset):
    """What a plain PyTorch script does: PIL open, RGB, transform."""

    def __init__(self, paths: list[str], grades: list[int], transform):
        self.paths, self.grades, self.transform = paths, grades, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), self.grades[index]


# ----------------------------------------------------------------------------- loops


class BatchClock(L.Callback):
    """Time stamps at the end of every optimiser step."""

    def __init__(self, stamps: list[float]):
        self.stamps = stamps

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.stamps.append((time.perf_counter(), time.process_time()))


def config_for(data: Path, out: Path, size: int, args) -> object:
    return load_config(None, {
        "data": str(data), "out": str(out), "arch": "resnet18", "pretrained": False,
        "head": "classification", "image_size": size, "batch_size": args.batch_size,
        "epochs": 1, "optimizer": "adamw", "lr": LR, "weight_decay": WEIGHT_DECAY,
        "scheduler": "cosine", "warmup_epochs": 0, "flips": True, "rotation": 0,
        "color_jitter": 0, "num_workers": args.workers, "accelerator": "cpu", "devices": "1",
        "max_train_batches": args.warmup + args.batches, "seed": 0, "channels_last": True,
    })


def run_drgrade(config) -> list[tuple[float, float]]:
    stamps: list[tuple[float, float]] = []
    try:
        fit.train(config, progress=False, extra_callbacks=[BatchClock(stamps)])
    finally:
        shutil.rmtree(config.out, ignore_errors=True)
    return stamps


def plain_loader(config) -> DataLoader:
    table = read_source(config.data, "prepared").table
    train = table[table["split"] == "train"]
    transform = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), v2.ToImage(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    dataset = PlainImages(list(train["path"]), list(train["grade"]), transform)
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=True,
                      num_workers=config.num_workers)


def run_plain(config, loader: DataLoader, channels_last: bool = True) -> list[tuple[float, float]]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    stamps: list[tuple[float, float]] = []
    for images, grades in loader:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(images), grades)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append((time.perf_counter(), time.process_time()))
        if len(stamps) == config.max_train_batches:
            break
    return stamps


def rates(stamps: list[tuple[float, float]], warmup: int, batch_size: int) -> tuple[float, float]:
    """Images per wall-clock and per CPU second from the end of batch `warmup` to the last."""
    steady = stamps[warmup - 1:]
    images = (len(steady) - 1) * batch_size
    return (images / (steady[-1][0] - steady[0][0]), images / (steady[-1][1] - steady[0][1]))


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="batches left out at the start")
    parser.add_argument("--batches", type=int, default=8, help="batches timed per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (all loops)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads, all loops (0: torch's default)")
    parser.add_argument("--loops", nargs="+", choices=LOOPS, default=list(LOOPS))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/drgrade-train-speed"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    configs = {}
    for size in args.sizes:
        prepared = prepared_folder(args.scratch, size, photos=200)
        data = bench_folder(prepared, args.scratch,
                            (args.warmup + args.batches) * args.batch_size)
        configs[size] = config_for(data, args.scratch / f"run-{size}", size, args)

    cpu_valid = args.workers == 0  # a worker's CPU time is not this process's
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.workers} workers, batch {args.batch_size}, "
          f"timed batches {args.warmup + 1}-{args.warmup + args.batches}, "
          f"{time.strftime('%Y-%m-%d')}")
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for rep in range(args.repeat):
        for size, config in configs.items():
            for loop in args.loops:
                load = os.getloadavg()[0]
                if loop.startswith("drgrade"):
                    stamps = run_drgrade(config)
                elif loop in ("plain", "plain-nchw"):
                    stamps = run_plain(config, plain_loader(config), loop == "plain")
                else:
                    stamps = run_plain(config, GradingDataModule(config).train_dataloader())
                wall, cpu = rates(stamps, args.warmup, args.batch_size)
                results.setdefault((size, loop), []).append((wall, cpu))
                print(f"  run {rep + 1} {size} px {loop:13s} {wall:6.2f} img/s wall"
                      + (f" {cpu:6.2f} img/CPU s" if cpu_valid else "")
                      + f"  (load average {load:.1f})", flush=True)

    kinds = [("wall", 0)] + ([("CPU", 1)] if cpu_valid else [])
    print("\n| px | loop | " + " | ".join(
        f"img/{k} s best | min-max | / plain" for k, _ in kinds) + " |")
    print("|---:|---|" + "---:|---|---:|" * len(kinds))
    for size in configs:
        cells = {}
        for loop in args.loops:
            cells[loop] = []
            for _, i in kinds:
                values = [r[i] for r in results[(size, loop)]]
                plain = max(r[i] for r in results.get((size, "plain"), [(float("nan"),) * 2]))
                cells[loop].append(f"{max(values):.2f} | {min(values):.2f}-{max(values):.2f}"
                                   f" | {max(values) / plain:.2f}")
            print(f"| {size} | {loop} | " + " | ".join(cells[loop]) + " |")


if __name__ == "__main__":
    main()
