"""Inference speed on the CPU: PyTorch eager against ONNX Runtime, and `predict` end to end.

    .venv/bin/python benchmarks/inference_speed.py        # --data ../shared/data --repeat 3
    .venv/bin/python benchmarks/inference_speed.py --archs resnet18 --sizes 224 --repeat 1
        # a quick check that it runs (a fraction of the cases)

1. Network throughput (images/s) of ResNet-18 and ResNet-50 at 224 and 512 px, batch 1 and
   32: `TorchGrader.probabilities` (the GradingNetwork as `predict` runs it: eager, no_grad, in
   the channels-last layout training uses), the same in PyTorch's default NCHW layout, and
   `OnnxGrader.probabilities` (the same weights exported by `drgrade export`, in onnxruntime).
2. `predict` end to end on the 20 full-size IDRiD photographs (decode + fundus crop + model,
   CSV written): ResNet-18 at 224 and 512 px, torch with 0/1/2 loader workers and
   onnxruntime with 0/1.
3. Part 1 at batch 1 with one thread each, in images per CPU second: the per-core
   comparison, much less disturbed by other jobs than wall-clock time.

Models are randomly initialised (speed does not depend on the weights; nothing is
downloaded). Other jobs may share the CPU, so every variant is timed in each round, rounds
are repeated, and the best round is kept: the figure least disturbed by the others.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from drgrade.inference.export import export_onnx
from drgrade.inference.grader import GraderBase
from drgrade.inference.onnx_grader import OnnxGrader
from drgrade.inference.predict import predict
from drgrade.inference.torch_grader import TorchGrader
from drgrade.model_card import ModelCard
from drgrade.network import GradingNetwork

ARCHS = ("resnet18", "resnet50")
SIZES = (224, 512)
BATCHES = (1, 32)
IMAGES_PER_TIMING = 32  # batch 1 is called 32 times (8 on one thread), batch 32 once


def random_grader(arch: str, size: int, channels_last: bool = True) -> TorchGrader:
    """A randomly initialised grader whose model card says: fundus crop at `size` px."""
    card = ModelCard(arch=arch, head="classification", image_size=size, mean=[0.5] * 3,
                     std=[0.5] * 3, prepare={"size": size, "enhance": "none"})
    network = GradingNetwork(arch, "classification", channels_last=channels_last)
    return TorchGrader(network, card, device="cpu")


def seconds(run, calls: int, clock=time.perf_counter) -> float:
    """Seconds of `calls` calls of `run` on `clock`."""
    start = clock()
    for _ in range(calls):
        run()
    return clock() - start


def network_speed(repeat: int, folder: Path, batches: tuple[int, ...] = BATCHES,
                  single_thread: bool = False, archs: tuple[str, ...] = ARCHS,
                  sizes: tuple[int, ...] = SIZES) -> list[tuple]:
    """(arch, size, batch, images/s of eager, eager NCHW and onnxruntime), best of `repeat`.

    `single_thread`: one thread each, timed in CPU seconds of this process, which other
    jobs on the machine disturb much less than wall-clock time.
    """
    threads = 1 if single_thread else None
    clock = time.process_time if single_thread else time.perf_counter
    images = IMAGES_PER_TIMING // 4 if single_thread else IMAGES_PER_TIMING  # 1 thread is slow
    if single_thread:
        torch.set_num_threads(1)
    cases = []
    for arch in archs:
        for size in sizes:
            grader = random_grader(arch, size)
            # Training's default memory format is channels-last; this is the same network
            # in PyTorch's default NCHW layout.
            nchw = random_grader(arch, size, channels_last=False)
            nchw.network.load_state_dict(grader.network.state_dict())
            exported = export_onnx(grader, folder / f"{arch}-{size}.onnx").path
            onnx = OnnxGrader(exported, threads)
            for batch in batches:
                # Graders take numpy batches, as predict gives them.
                inputs = np.random.default_rng(0).standard_normal(
                    (batch, 3, size, size), dtype=np.float32)
                variants = {
                    "eager": lambda g=grader, x=inputs: g.probabilities(x),
                    "eager NCHW": lambda g=nchw, x=inputs: g.probabilities(x),
                    "onnxruntime": lambda g=onnx, x=inputs: g.probabilities(x),
                }
                cases.append(((arch, size, batch), variants))
    best: dict[tuple, float] = {}
    with torch.no_grad():
        for _, variants in cases:
            for run in variants.values():
                run()  # warm-up: first-call allocations and ORT's lazy initialisation
        for round_ in range(repeat):
            for key, variants in cases:
                calls = max(1, images // key[2])
                for name, run in variants.items():
                    rate = key[2] * calls / seconds(run, calls, clock)
                    best[key + (name,)] = max(best.get(key + (name,), 0.0), rate)
            print(f"round {round_ + 1}/{repeat} done", flush=True)
    return [(*key, *(best[key + (name,)] for name in variants)) for key, variants in cases]


def print_network_table(rows: list[tuple], unit: str) -> None:
    """A Markdown table of `network_speed` rows."""
    print(f"\n{unit}:\n\n| model | px | batch | eager | eager NCHW | onnxruntime | ORT / eager |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arch, size, batch, eager, nchw, ort in rows:
        print(f"| {arch} | {size} | {batch} | {eager:.1f} | {nchw:.1f} | {ort:.1f} | "
              f"{ort / eager:.2f}x |")


def predict_speed(data: Path, repeat: int, folder: Path,
                  sizes: tuple[int, ...] = SIZES) -> dict[tuple, float]:
    """Images/s of `predict` on the IDRiD photographs by (px, backend, workers), best round."""
    photographs = data / "idrid-train/fullres"
    count = len(list(photographs.glob("*.jpg")))
    variants: dict[tuple, GraderBase] = {}
    for size in sizes:
        grader = random_grader("resnet18", size)
        onnx = OnnxGrader(export_onnx(grader, folder / f"predict-{size}.onnx").path)
        for workers in (0, 1, 2):
            variants[size, "torch", workers] = grader
        for workers in (0, 1):
            variants[size, "onnxruntime", workers] = onnx
    best = dict.fromkeys(variants, 0.0)
    for round_ in range(repeat):
        for key, model in variants.items():
            start = time.perf_counter()
            predict(model, [photographs], folder / "predictions.csv", workers=key[2],
                    progress=False)
            best[key] = max(best[key], count / (time.perf_counter() - start))
        print(f"predict round {round_ + 1}/{repeat} done", flush=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best is kept")
    parser.add_argument("--part", choices=["all", "network", "predict", "single"],
                        default="all", help="run one part only (single: 1 thread, batch 1, "
                                            "images per CPU second)")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), help="networks timed")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="input px")
    args = parser.parse_args()
    archs, sizes = tuple(args.archs), tuple(args.sizes)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
          f"{onnxruntime.__version__}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.part in ("all", "network"):
            rows = network_speed(args.repeat, folder, archs=archs, sizes=sizes)
            print_network_table(rows, "images per wall s")
        if args.part in ("all", "predict"):
            speeds = predict_speed(args.data, args.repeat, folder, sizes)
            print("\n| predict, 20 IDRiD photographs, ResNet-18, batch 16 | px | img/s |")
            print("|---|---:|---:|")
            for (size, backend, workers), rate in speeds.items():
                print(f"| {backend}, workers {workers} | {size} | {rate:.2f} |")
        if args.part in ("all", "single"):  # last: it leaves torch on one thread
            rows = network_speed(args.repeat, folder, batches=(1,), single_thread=True,
                                 archs=archs, sizes=sizes)
            print_network_table(rows, "1 thread, images per CPU s")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
