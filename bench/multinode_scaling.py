"""What one more node buys a small model: a step's compute against the gradient all-reduce it adds.

Measured here, on one machine: (a) model3's training step (forward, backward, Adam) at the per-process batch
of 1, 2 and 4 nodes sharing a global batch of 128 (one CPU thread, as one rank of a run has); (b) the
all-reduce of model3's gradients (one flat fp32 tensor of its parameter count) between 2 and 4 gloo processes
over 127.0.0.1, which is what DDP sends each step. The estimate of an epoch on N nodes is then
``steps x (step(128 / N) + all-reduce)``, steps being 60,000 / 128 whatever N (the batch is global).

    python bench/multinode_scaling.py [--steps 60] [--reduces 300]

Loopback is the best network there is: between instances (TCP, 25 Gbit/s, ~50-100 us a round trip in a
cluster placement group) each all-reduce costs at least a few round trips more.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def step_ms(batch: int, steps: int) -> float:
    import torch
    import torch.nn.functional as F

    from trainer.models import build_model

    torch.manual_seed(0)
    model = build_model("model3").to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 28, 28).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 10):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 10:
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _reduce_worker(rank: int, world: int, port: int, numel: int, reps: int, out) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    t = torch.ones(numel)
    for _ in range(20):
        dist.all_reduce(t)
    times = []
    for _ in range(reps):
        dist.barrier()
        s = time.perf_counter()
        dist.all_reduce(t)
        times.append((time.perf_counter() - s) * 1e6)
    if rank == 0:
        out.put(statistics.median(times))
    dist.destroy_process_group()


def allreduce_us(world: int, numel: int, reps: int) -> float:
    import multiprocessing as mp

    from launcher.targets.local import free_port

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_reduce_worker, args=(r, world, port, numel, reps, q)) for r in range(world)]
    for p in procs:
        p.start()
    value = q.get(timeout=300)
    for p in procs:
        p.join()
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--reduces", type=int, default=300)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from trainer.models import build_model, count_params

    numel = count_params(build_model("model3"))
    print(f"model3: {numel:,} parameters, {numel * 4 / 1024:.1f} KB of fp32 gradients a step")
    steps_epoch = 60000 // 128
    reduce = {w: allreduce_us(w, numel, args.reduces) for w in (2, 4)}
    print("\n| nodes | per-process batch | step compute (ms) | all-reduce (us, loopback) | epoch estimate (s) "
          "| speed-up |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    base = None
    for n in (1, 2, 4):
        ms = step_ms(128 // n, args.steps)
        comm = reduce.get(n, 0.0)
        epoch = steps_epoch * (ms + comm / 1000) / 1000
        base = base or epoch
        print(f"| {n} | {128 // n} | {ms:.2f} | {comm:.0f} | {epoch:.1f} | {base / epoch:.2f}x |")


if __name__ == "__main__":
    main()
