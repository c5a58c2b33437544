"""Training images/s of `drgrade train`'s loop against a synthetic ceiling and a lab pipeline.

    .venv/bin/python benchmarks/gpu_throughput.py       # GPU: 512 px, bf16-mixed, workers 4 8 16
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpu_throughput.py --device cpu --size 64 \\
        --steps 5 --archs resnet18 --workers 0 2 --precision 32-true --batch-size 8

Same network (drgrade's GradingNetwork: torchvision ResNet, 5 logits, from scratch,
channels-last), batch size, optimiser (AdamW) and precision in every loop:

  drgrade   train() itself (Lightning Trainer, GradingModule, GradingDataModule over the
            `drgrade prepare` JPEG cache at --size, flips on), one run per --workers value
  ceiling   a plain loop on random tensors already on the device (no data pipeline at all):
            forward under torch.autocast, cross-entropy, zero_grad, backward, step
  lab       the ceiling's loop over a torch Dataset that opens each full-size photograph
            with PIL, Resize((size, size)) and ToTensor (torchvision), one run per --workers

Data: --photos synthetic photographs (drgrade.data.synthetic, 600-1200 px wide), prepared at
--size (cached under --scratch), listed enough times for one epoch of all timed steps.
Each step is timed from the end of one optimiser step to the end of the next (with a device
synchronise on CUDA, so that queued kernels are not left out); the first --warmup steps
are left out. First step: a fresh process per arch and --workers value runs train() for one
step and reports the time from the start of its Python process to the end of that step
(imports, Lightning, loader workers, CUDA and cuDNN start-up).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import transforms
from train_speed import LR, WEIGHT_DECAY, BatchClock, PlainImages, bench_folder, prepared_folder

import drgrade.fit as fit
from drgrade.config import load_config
from drgrade.data.sources import read_source
from drgrade.network import GradingNetwork

STARTED = "DRGRADE_BENCH_STARTED"  # environment: time.time() when the parent started a probe


def synchronize(device: str) -> None:
    """Wait for queued kernels, so that a time stamp covers the work of its step."""
    if device == "cuda":
        torch.cuda.synchronize()


class SyncedClock(BatchClock):
    """BatchClock after a device synchronise."""

    def __init__(self, stamps: list, device: str):
        super().__init__(stamps)
        self.device = device

    def on_train_batch_end(self, *args, **kwargs) -> None:
        synchronize(self.device)
        super().on_train_batch_end()


class FirstStep(BatchClock):
    """Prints the seconds from the probe's process start to its first optimiser step."""

    def __init__(self, device: str):
        super().__init__([])
        self.device = device

    def on_train_batch_end(self, *args, **kwargs) -> None:
        if not self.stamps:
            synchronize(self.device)
            self.stamps.append(time.time())
            print(f"FIRST_STEP {self.stamps[0] - float(os.environ[STARTED]):.3f}", flush=True)


def drgrade_config(data: Path, out: Path, arch: str, workers: int, args):
    """The `drgrade train` config of one drgrade run."""
    return load_config(None, {
        "data": str(data), "out": str(out), "arch": arch, "pretrained": False,
        "head": "classification", "image_size": args.size, "batch_size": args.batch_size,
        "epochs": 1, "optimizer": "adamw", "lr": LR, "weight_decay": WEIGHT_DECAY,
        "scheduler": "cosine", "warmup_epochs": 0, "flips": True, "rotation": 0,
        "color_jitter": 0, "num_workers": workers, "precision": args.precision,
        "accelerator": "gpu" if args.device == "cuda" else "cpu", "devices": "1",
        "max_train_batches": args.warmup + args.steps, "seed": 0, "channels_last": True,
    })


def run_drgrade(config, callback: BatchClock) -> None:
    """train() with `callback` added, its run folder removed afterwards."""
    try:
        fit.train(config, progress=False, extra_callbacks=[callback])
    finally:
        shutil.rmtree(config.out, ignore_errors=True)


def run_plain(arch: str, batches, args) -> list[tuple[float, float]]:
    """The plain loop (ceiling and lab): `batches` yields (images, grades) on the CPU or device."""
    torch.manual_seed(0)
    network = GradingNetwork(arch, "classification", channels_last=True).to(args.device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    stamps: list[tuple[float, float]] = []
    for images, grades in batches:
        images = images.to(args.device, non_blocking=True,
                           memory_format=torch.channels_last)
        grades = grades.to(args.device, non_blocking=True)
        with torch.autocast(args.device, dtype=torch.bfloat16,
                            enabled=args.precision == "bf16-mixed"):
            loss = F.cross_entropy(network(images), grades)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(args.device)
        stamps.append((time.perf_counter(), time.process_time()))
        if len(stamps) == args.warmup + args.steps:
            break
    return stamps


def synthetic_batches(args):
    """The same random batch, already on the device, for ever."""
    images = torch.rand(args.batch_size, 3, args.size, args.size, device=args.device)
    grades = torch.randint(0, 5, (args.batch_size,), device=args.device)
    while True:
        yield images, grades


def lab_loader(photographs: Path, workers: int, args) -> DataLoader:
    """The lab's pipeline: full-size photograph, PIL open, Resize, ToTensor."""
    paths = list(read_source(photographs).table["path"])
    paths *= -(-(args.warmup + args.steps) * args.batch_size // len(paths))
    transform = transforms.Compose([transforms.Resize((args.size, args.size)),
                                    transforms.ToTensor()])
    return DataLoader(PlainImages(paths, [0] * len(paths), transform),
                      batch_size=args.batch_size, shuffle=True, num_workers=workers,
                      pin_memory=args.device == "cuda")


def rate(stamps: list, args) -> float:
    """Images per wall-clock second after the warm-up steps."""
    steady = stamps[args.warmup - 1:]
    return (len(steady) - 1) * args.batch_size / (steady[-1][0] - steady[0][0])


def first_step(data: Path, arch: str, workers: int, args) -> float:
    """Seconds from process start to the first optimiser step of train(), in a new process."""
    command = [sys.executable, __file__, "--probe", str(data), "--device", args.device,
               "--size", str(args.size), "--archs", arch, "--workers", str(workers),
               "--batch-size", str(args.batch_size), "--precision", args.precision,
               "--scratch", str(args.scratch)]
    result = subprocess.run(command, capture_output=True, text=True, check=True,
                            env={**os.environ, STARTED: repr(time.time())})
    return float(result.stdout.split("FIRST_STEP ")[1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50, help="steps timed per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out at the start")
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8, 16],
                        help="DataLoader workers (drgrade and lab loops)")
    parser.add_argument("--precision", choices=["bf16-mixed", "32-true"], default="bf16-mixed")
    parser.add_argument("--photos", type=int, default=200, help="synthetic photographs made")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/drgrade-gpu-throughput"))
    # DATA: one first-step measurement on prepared data (run by first_step, a fresh process).
    parser.add_argument("--probe", type=Path, metavar="DATA", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        args.warmup, args.steps = 0, 1
        config = drgrade_config(args.probe, args.scratch / "probe-run", args.archs[0],
                                args.workers[0], args)
        run_drgrade(config, FirstStep(args.device))
        return
    prepared = prepared_folder(args.scratch, args.size, args.photos)
    data = bench_folder(prepared, args.scratch, (args.warmup + args.steps) * args.batch_size)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else (
        platform.processor() or platform.machine())
    print(f"{device_name}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.size} px, batch {args.batch_size}, "
          f"{args.precision}, timed steps {args.warmup + 1}-{args.warmup + args.steps}, "
          f"{time.strftime('%Y-%m-%d')}", flush=True)
    rows = []
    for arch in args.archs:
        ceiling = rate(run_plain(arch, synthetic_batches(args), args), args)
        rows.append((arch, "ceiling", "-", ceiling, None, None))
        print(f"  {arch} ceiling {ceiling:.1f} img/s", flush=True)
        for workers in args.workers:
            lab = rate(run_plain(arch, lab_loader(args.scratch / "photographs", workers, args),
                                 args), args)
            stamps: list = []
            config = drgrade_config(data, args.scratch / "run", arch, workers, args)
            run_drgrade(config, SyncedClock(stamps, args.device))
            ours = rate(stamps, args)
            start = first_step(data, arch, workers, args)
            rows += [(arch, "lab", workers, lab, None, None),
                     (arch, "drgrade", workers, ours, lab, start)]
            print(f"  {arch} {workers} workers: lab {lab:.1f}, drgrade {ours:.1f} img/s, "
                  f"first step {start:.1f} s", flush=True)

    print("\n| arch | loop | workers | img/s | / ceiling | / lab | first step s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for arch, loop, workers, value, lab, start in rows:
        ceiling = next(r[3] for r in rows if r[0] == arch and r[1] == "ceiling")
        print(f"| {arch} | {loop} | {workers} | {value:.1f} | {value / ceiling:.2f} | "
              f"{'' if lab is None else f'{value / lab:.2f}'} | "
              f"{'' if start is None else f'{start:.1f}'} |")


if __name__ == "__main__":
    main()
