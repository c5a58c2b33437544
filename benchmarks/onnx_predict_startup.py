"""What grading ONE photograph costs a user: `drgrade predict` as a fresh process, to the CSV.

    .venv/bin/python benchmarks/onnx_predict_startup.py        # --runs 5 --photo ...

    drgrade predict MODEL IDRiD_001.jpg --out one.csv

with MODEL an exported .onnx file (onnxruntime, no torch) or the run folder / checkpoint
(PyTorch), for two ResNet-18 models made here in a temporary folder:

  28 px    a tiny RetinaMNIST run (`drgrade.fit.train`, 1 epoch of 2 batches), exported
           with `drgrade export RUN --onnx FILE`; compared with its run folder
  512 px   random weights, a card saying "fundus crop at 512 px" (the realistic input),
           exported with `export_onnx`; compared with a checkpoint of the same weights

Each command runs once to warm the file cache, then --runs times, the variants interleaved
round by round; the median is reported. A small launcher process starts each command and
times it; the peak RSS is the launcher's getrusage(RUSAGE_CHILDREN).ru_maxrss afterwards:
that of the largest single process (as /usr/bin/time -v gives it). With predict's default
`--workers` (1 on 2 cores) a loader process runs beside the main one, so the whole tree's
peak, sampled from /proc every 10 ms, is reported too. Whether torch or Lightning got
imported comes from one more run under `python -X importtime`.
The children get the environment as it is, minus OMP_NUM_THREADS/MKL_NUM_THREADS, so they
run with a user's default threads.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

import drgrade.fit as fit
from drgrade.checkpoint import NETWORK_PREFIX
from drgrade.config import load_config
from drgrade.inference.export import export_onnx
from drgrade.inference.torch_grader import TorchGrader
from drgrade.model_card import CHECKPOINT_KEY, ModelCard
from drgrade.network import GradingNetwork

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PHOTO = SHARED / "idrid-train" / "fullres" / "IDRiD_001.jpg"
NPZ = SHARED / "retinamnist" / "retinamnist.npz"
BIN = Path(sys.executable).parent
HEAVY = ("torch", "lightning", "pytorch_lightning", "lightning_fabric", "torchvision")
TARGET_S, TARGET_MB = 2.0, 400


def tiny_run(folder: Path) -> tuple[Path, Path]:
    """A 28 px RetinaMNIST run folder and its `drgrade export`ed .onnx file."""
    run = folder / "tiny-run"
    config = load_config(None, {
        "data": str(NPZ), "out": str(run), "image_size": 28, "arch": "resnet18", "epochs": 1,
        "max_train_batches": 2, "num_workers": 0, "accelerator": "cpu", "devices": "1"})
    fit.train(config, progress=False)
    onnx = folder / "tiny-28.onnx"
    subprocess.run([BIN / "drgrade", "export", str(run), "--onnx", str(onnx)], check=True,
                   stdout=subprocess.DEVNULL)
    return run, onnx


def model_512(folder: Path) -> tuple[Path, Path]:
    """A random-weights 512 px ResNet-18 as a checkpoint and as an .onnx file."""
    size = 512
    card = ModelCard(arch="resnet18", head="classification", image_size=size, mean=[0.5] * 3,
                     std=[0.5] * 3, prepare={"size": size, "enhance": "none"})
    grader = TorchGrader(GradingNetwork("resnet18", "classification"), card, device="cpu")
    onnx = export_onnx(grader, folder / "resnet18-512.onnx").path
    # The two entries drgrade.checkpoint reads from what training writes: card and weights.
    checkpoint = folder / "resnet18-512.ckpt"
    weights = {NETWORK_PREFIX + k: v for k, v in grader.network.state_dict().items()}
    torch.save({CHECKPOINT_KEY: card.to_dict(), "state_dict": weights}, checkpoint)
    return checkpoint, onnx


# Runs argv[1:] and prints its wall seconds and ru_maxrss. A launcher, because Linux starts
# an exec'd child's ru_maxrss at the RSS of the process it was forked from: launched from
# this benchmark (1.4 GB after training and export) every child would report 1.4 GB.
LAUNCHER = """\
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.perf_counter() - start
print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)
"""


def _tree_rss_kb(pid: int) -> int:
    """Resident KB of the descendants of `pid` now (the launcher itself left out)."""
    total, pending, root = 0, [pid], True
    while pending:
        p = pending.pop()
        try:
            if not root:
                status = Path(f"/proc/{p}/status").read_text()
                total += next(int(line.split()[1]) for line in status.splitlines()
                              if line.startswith("VmRSS:"))
            root = False
            for task in Path(f"/proc/{p}/task").iterdir():
                pending += map(int, (task / "children").read_text().split())
        except (OSError, StopIteration, ValueError):
            continue  # exited between the listing and the read, or a zombie without VmRSS
    return total


def timed(command: list, env: dict) -> tuple[float, float, float]:
    """(wall s, peak RSS MB of the largest process, sampled peak MB of the whole tree)."""
    # stderr to a file, not a pipe: a full pipe would stall the child until it is read.
    with tempfile.TemporaryFile() as errors:
        launcher = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, *map(str, command)],
                                    env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
        done, peak_tree = threading.Event(), [0]

        def sample() -> None:
            while not done.wait(0.01):
                peak_tree[0] = max(peak_tree[0], _tree_rss_kb(launcher.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        report = launcher.communicate()[0].split()
        done.set()
        sampler.join()
        if launcher.returncode != 0 or len(report) != 3 or report[2] != "0":
            errors.seek(0)
            raise RuntimeError(f"{' '.join(map(str, command))} failed:\n"
                               f"{errors.read().decode(errors='replace')[-2000:]}")
    return float(report[0]), int(report[1]) / 1024, peak_tree[0] / 1024


def imports(arguments: list, env: dict) -> tuple[set[str], list[tuple[float, str]]]:
    """Modules a predict run imports, and the slowest top-level imports (s, name)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "drgrade", *arguments],
                            env=env, capture_output=True, text=True, check=True)
    names, top = set(), []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        names.add(name.strip())
        if not name[1:].startswith(" "):  # not indented: imported by drgrade's own code
            top.append((int(cumulative) / 1e6, name.strip()))
    return names, sorted(top, reverse=True)[:6]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, default=PHOTO)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run, tiny_onnx = tiny_run(folder)
        checkpoint, onnx_512 = model_512(folder)
        out = str(folder / "one.csv")
        variants = {  # (model, path, extra flags) -> model argument
            ("ResNet-18 28 px", "onnx", ""): tiny_onnx,
            ("ResNet-18 28 px", "run folder (PyTorch)", ""): run,
            ("ResNet-18 512 px", "onnx", ""): onnx_512,
            ("ResNet-18 512 px", "onnx", "--workers 0"): onnx_512,
            ("ResNet-18 512 px", "checkpoint (PyTorch)", ""): checkpoint,
        }
        arguments = {key: ["predict", str(model), str(args.photo), "--out", out,
                           *key[2].split()] for key, model in variants.items()}
        results: dict[tuple, list[tuple[float, float, float]]] = {key: [] for key in variants}
        loads = [os.getloadavg()[0]]
        for round_ in range(args.runs + 1):  # round 0 warms the file cache and is dropped
            for key in variants:
                measured = timed([BIN / "drgrade", *arguments[key]], env)
                if round_:
                    results[key].append(measured)
            loads.append(os.getloadavg()[0])
            print(f"round {round_}/{args.runs} done (load {loads[-1]:.1f})", flush=True)
        imported = {key: imports(arguments[key], env) for key in variants}

    print(f"\ndrgrade predict MODEL {args.photo.name} --out one.csv, median of {args.runs} "
          f"runs; load average {min(loads):.1f}-{max(loads):.1f} during the runs\n")
    print("| model | path | wall s (median, min-max) | peak MB (largest process) "
          "| peak MB (process tree, sampled) | torch imported? |")
    print("|---|---|---:|---:|---:|---|")
    for key, runs in results.items():
        walls, peaks, trees = zip(*runs, strict=True)
        heavy = sorted(set(HEAVY) & imported[key][0])
        model, path, flags = key
        print(f"| {model} | {path}{f' `{flags}`' if flags else ''} | "
              f"{statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}) | "
              f"{statistics.median(peaks):.0f} | {statistics.median(trees):.0f} | "
              f"{', '.join(heavy) if heavy else 'no'} |")
    print(f"\ntargets for the ONNX path: <= {TARGET_S} s wall, <= {TARGET_MB} MB peak")
    for key, (_, slowest) in imported.items():
        listed = ", ".join(f"{name} {seconds:.2f}" for seconds, name in slowest)
        print(f"slowest top-level imports (s, -X importtime), {key[0]} {key[1]} {key[2]}: "
              f"{listed}")


if __name__ == "__main__":
    main()
