"""Training throughput: the seed 003 pipeline vs ours, same model, same augmentations, one machine.

(a) seed: torchvision per-image PIL transforms in a DataLoader with workers, Gap19kNet, Adam,
    batch 128 — exactly the Compose in ../shared/seeds/003_716314f9133d09a3.txt.
(b) ours: the real trainer (``python -m trainer``) on configs/gap_19k.yaml for one epoch:
    uint8 data on the device, batched augmentation, channels_last.
Images/s over a full epoch, warm-up batches excluded for (a); (b) reports its own epoch
images/s (training only, evaluation excluded). Peak RSS of each side is printed too.

    python bench/throughput.py --data-dir ../shared/data/mnist [--device cuda] [--epochs-fraction 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


SEED_BATCH, WARMUP = 128, 10  # the seed's batch; batches left out of its timing


def seed_pipeline(data_dir: str, device: str, workers: int, fraction: float, warmup: int = WARMUP) -> dict:
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torchvision import transforms

    from trainer.data import load_mnist
    from trainer.models import Gap19kNet

    ds = load_mnist(data_dir)
    train_transforms = transforms.Compose([
        transforms.RandomApply([transforms.CenterCrop(22)], p=0.1),
        transforms.Resize((28, 28)),
        transforms.RandomRotation(degrees=10),
        transforms.ColorJitter(brightness=0.2, contrast=0.2),
        transforms.RandomAffine(0, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        transforms.ToTensor(),
        transforms.Normalize((0.1307,), (0.3081,)),
    ])

    class SeedMNIST(torch.utils.data.Dataset):  # what torchvision.datasets.MNIST.__getitem__ does
        def __init__(self, images, labels):
            self.images, self.labels = images[:, 0].numpy(), labels.numpy()

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return train_transforms(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])

    n = int(len(ds.train_labels) * fraction)
    loader = torch.utils.data.DataLoader(SeedMNIST(ds.train_images[:n], ds.train_labels[:n]), batch_size=SEED_BATCH,
                                         shuffle=True, num_workers=workers, pin_memory=device == "cuda",
                                         persistent_workers=False)
    model = Gap19kNet().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    seen, t0 = 0, None
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            t0, seen = time.perf_counter(), 0
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"images_per_second": seen / elapsed, "images": seen, "seconds": elapsed,
            "peak_rss_mb": round(rss_self + workers * rss_children, 1)}


def our_config(data_dir: str, fraction: float, extra: list[str]):
    """configs/gap_19k.yaml for one epoch with ``extra`` --set applied (a bad one: ConfigError, one line)."""
    from core.config import load_config

    overrides = ["train.epochs=1", "train.log_every=1000", *extra]
    if fraction < 1:
        overrides.append(f"data.train_limit={max(1, int(60000 * fraction))}")
    cfg = load_config(ROOT / "configs" / "gap_19k.yaml", overrides)
    cfg.data.dir = str(Path(data_dir).resolve())
    return cfg


def our_pipeline(cfg) -> dict:
    from core.config import config_to_yaml
    from core.errors import LaunchError
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.yaml").write_text(config_to_yaml(cfg))
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        p = subprocess.run([sys.executable, "-m", "trainer", "--run-dir", tmp], cwd=ROOT, capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if p.returncode != 0:
            lines = [ln.strip() for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
            last = lines[-1].removeprefix("error: ") if lines else "no output"
            fix = "" if " — " in last else " — rerun with MNIST_LAUNCH_DEBUG=1 for its traceback"
            raise LaunchError(f"our trainer failed (exit {p.returncode}): {last}{fix}")
        summary = json.loads((Path(tmp) / "summary.json").read_text())
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"images_per_second": summary["images_per_second"], "seconds": summary["train_seconds"],
            "device": summary["device"], "peak_rss_mb": round(max(peak, before) / 1024, 1),
            "test_accuracy": summary["final_test_accuracy"]}


def check_args(args: argparse.Namespace) -> dict:
    """Every input checked before anything runs (one `error:` line each); the trainer's configs by variant."""
    from core.errors import ConfigError
    from trainer.data import locate

    if not 0 < args.fraction <= 1:
        raise ConfigError(f"--fraction {args.fraction}: must be in (0, 1] — e.g. --fraction 0.1 for 6,000 images")
    images = int(60000 * args.fraction)
    if images // SEED_BATCH <= WARMUP:
        raise ConfigError(f"--fraction {args.fraction}: {images} images leave nothing to time after "
                          f"the seed pipeline's {WARMUP} warm-up batches of {SEED_BATCH} — use --fraction 0.03 or more")
    if args.workers < 0:
        raise ConfigError(f"--workers {args.workers}: must be 0 or more — e.g. --workers 2")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise ConfigError(f"--device {args.device!r}: use cpu or cuda")
    if args.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: this machine has no CUDA GPU — use --device cpu")
    locate(args.data_dir)  # DataError naming the folder and the missing files
    variants = ({"fp32": ["train.mixed_precision=no"], "bf16": ["train.mixed_precision=bf16"]}
                if not args.overrides else {"custom": args.overrides})
    return {name: our_config(args.data_dir, args.fraction, extra) for name, extra in variants.items()}


def main() -> None:
    from core import settings
    from core.errors import LaunchError

    try:
        run()
    except LaunchError as err:
        if settings.debug():
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--device", default="cpu", help="device for the seed pipeline (ours picks its own)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="DataLoader workers for the seed pipeline")
    ap.add_argument("--fraction", type=float, default=1.0, help="fraction of the 60k training images per epoch")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="--set for our trainer (default: two variants, fp32 and bf16 autocast)")
    return ap.parse_args()


def run() -> None:
    args = parse_args()
    configs = check_args(args)
    import torch

    ours = {name: our_pipeline(cfg) for name, cfg in configs.items()}
    seed = seed_pipeline(args.data_dir, args.device, args.workers, args.fraction)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}", "workers": args.workers,
        "seed": {"images_per_second": round(seed["images_per_second"], 1), "peak_rss_mb": seed["peak_rss_mb"]},
    }
    for name, o in ours.items():
        result[f"ours_{name}"] = {**o, "ratio": round(o["images_per_second"] / seed["images_per_second"], 2)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
