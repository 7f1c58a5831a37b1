"""Forward-pass time of the default network and time of the "optimize" method, 128² and 256².

    python -m benchmarks.speed [--repeats 30] [--threads 2]

Median (and p90) of repeated runs after warm-up, in one process. The network is the shipped
default checkpoint if there is one, else an untrained RegNet of the default architecture (same cost).
"""

from __future__ import annotations

import argparse
import platform
import statistics

import numpy as np
import torch

import regcore
from regcore.checkpoints import default_model_name, load_model
from regcore.data import load_photo

from .suite import call_times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = default_model_name()
    net = load_model(name) if name else regcore.RegNet().eval()
    cpu = platform.processor() or platform.machine()
    print(f"# speed — {cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads, model {name or 'untrained default RegNet'}")
    print()
    print("| what | size | median (ms) | p90 (ms) |")
    print("|---|---|---|---|")
    for size in (128, 256):
        x = torch.from_numpy(load_photo("camera", size))[None, None]
        y = torch.roll(x, 2, dims=-1)
        with torch.inference_mode():
            t = call_times(lambda x=x, y=y: net(x, y), args.repeats, warmup=3)
        print(f"| network forward | {size}² | {1000 * statistics.median(t):.1f} | {1000 * np.percentile(t, 90):.1f} |")
        t = call_times(lambda x=x, y=y: regcore.register(x[0, 0].numpy(), y[0, 0].numpy(), method="optimize"), max(3, args.repeats // 10))
        print(f"| register(method='optimize') | {size}² | {1000 * statistics.median(t):.1f} | {1000 * np.percentile(t, 90):.1f} |")


if __name__ == "__main__":
    main()
