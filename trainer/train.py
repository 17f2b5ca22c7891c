"""The Accelerate training loop: reads ``RUN_DIR/config.yaml``, writes every artifact to RUN_DIR.

Runs the same on a laptop CPU, one GPU or several processes (``accelerate launch
--num_processes N -m trainer --run-dir DIR``). Data sits on the device as uint8; each rank
trains on its shard of a per-epoch permutation; the test set is evaluated every epoch; a
checkpoint (``save_state``) per epoch resumes exactly (epoch, optimizer, scheduler, RNG).

    python -m trainer --run-dir runs/model3-20261122-1200-ab12
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Optional, cast

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed

from core import settings
from core.config import MODEL_CLAIMS, Config, config_from_yaml, per_process_batch
from core.errors import DataError, RunError
from trainer.augment import BatchAugment, normalize
from trainer.data import epoch_batches, load_mnist, steps_per_epoch
from trainer.events import EVENTS_FILE, EventWriter
from trainer.models import count_params, summarize
from trainer.optim import build_optimizer
from trainer.precision import cuda_capability, resolve_mixed_precision
from trainer.usermodel import build, check_budget

CHECKPOINTS = "checkpoints"
MARKER = "checkpoint.json"  # written last: a checkpoint without it is incomplete and never resumed
PREEMPTED_EXIT = 75  # the trainer saved a checkpoint on request (SIGUSR1) and stopped: resume continues it
CHECK_EVERY_MULTI = 10  # with several ranks, the signal flags are agreed on (all-reduced) every N steps
STEP_DELAY_ENV = settings.STEP_DELAY  # seconds slept after each step: a throttle for tests and demos
# a collective that waits longer fails: a node that vanished (instance lost, network cut) ends every rank within
# this bound instead of torch's 30 minutes (a rank killed on a live host fails its peers at once: the socket closes)
COLLECTIVE_TIMEOUT_S = 300.0


step_delay = settings.step_delay  # MNIST_LAUNCH_STEP_DELAY (core/settings.py)


class Preempted(Exception):
    """SIGUSR1 asked for a checkpoint and a stop; the checkpoint is saved."""

    def __init__(self, path: str) -> None:
        super().__init__(f"stopped on request after saving {path}")
        self.path = path


class Interrupts:
    """SIGUSR1: checkpoint at the next step boundary, then stop (a spot interruption notice).
    SIGUSR2: checkpoint at the next step boundary and keep training (a rebalance recommendation).

    The agent signals the trainer's whole process group, so every rank sets its own flag; ranks
    agree (an all-reduce) before acting, so they all save at the same step."""

    def __init__(self) -> None:
        self.stop = False
        self.save = False

    def install(self) -> None:
        signal.signal(signal.SIGUSR1, self._on_stop)
        signal.signal(signal.SIGUSR2, self._on_save)

    def _on_stop(self, _signum, _frame) -> None:
        self.stop = True

    def _on_save(self, _signum, _frame) -> None:
        self.save = True

    def due(self, step: int, accelerator: Accelerator) -> bool:
        """Whether to look at the flags after this step (the same answer on every rank)."""
        return accelerator.num_processes == 1 or step % CHECK_EVERY_MULTI == 0

    def agreed(self, accelerator: Accelerator) -> tuple[bool, bool]:
        """(stop, save) as any rank saw them: a collective when there are several ranks."""
        if accelerator.num_processes == 1:
            return self.stop, self.save
        flags = torch.tensor([float(self.stop), float(self.save)], device=accelerator.device)
        flags = accelerator.reduce(flags, reduction="sum")
        return bool(flags[0].item() > 0), bool(flags[1].item() > 0)


class TrainState:
    """What save_state does not already hold: epoch, history, best accuracy."""

    def __init__(self) -> None:
        self.epoch = 0
        self.best_accuracy = -1.0
        self.best_epoch = 0
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self.images_seen = 0
        self.step = 0  # >0 in a mid-epoch checkpoint: steps of epoch ``epoch + 1`` already taken

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


def build_scheduler(cfg: Config, optimizer, steps: int):
    """-> (scheduler or None, when it steps: 'batch' | 'epoch' | 'metric')."""
    s = cfg.scheduler
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma), "epoch"
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs * steps), "batch"
    if s.name == "onecycle":
        onecycle = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=s.max_lr or cfg.optimizer.lr, total_steps=cfg.train.epochs * steps,
            pct_start=s.pct_start, div_factor=s.div_factor, final_div_factor=s.final_div_factor,
            anneal_strategy=s.anneal_strategy, three_phase=s.three_phase,
        )
        return onecycle, "batch"
    if s.name == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=s.mode, factor=s.factor, patience=s.patience, min_lr=s.min_lr
        )
        return plateau, "metric"
    return None, "none"


def latest_checkpoint(run_dir: Path, processes: Optional[int] = None) -> Optional[Path]:
    """Newest checkpoint whose marker was written (so every file of it is complete). With
    ``processes``, mid-epoch checkpoints of another number of ranks are passed over: each rank's
    shard of the epoch, hence the steps already taken, depend on it."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return None
    done = [d for d in root.iterdir() if (d / MARKER).is_file()]
    if processes is not None:
        def usable(d: Path) -> bool:
            marker = json.loads((d / MARKER).read_text())
            return not marker.get("step") or marker.get("processes") == processes

        done = [d for d in done if usable(d)]

    def position(d: Path) -> tuple[int, int]:
        marker = json.loads((d / MARKER).read_text())
        return marker["epoch"], marker.get("step", 0)  # a mid-epoch one comes after its epoch's start

    return max(done, key=position, default=None)


def prune_checkpoints(run_dir: Path, keep: int, best_epoch: int) -> None:
    root = run_dir / CHECKPOINTS
    done = sorted((d for d in root.iterdir() if (d / MARKER).is_file()), key=lambda d: d.name)
    for d in done[:-keep]:
        if d.name != f"epoch_{best_epoch:03d}":
            shutil.rmtree(d, ignore_errors=True)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)  # readers (the agent, the launcher) never see a half-written file


@torch.no_grad()
def evaluate(model, images, labels, batch_size: int, accelerator: Accelerator, channels_last: bool):
    """Test loss and accuracy over this rank's shard, summed across ranks."""
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    idx = torch.arange(rank, len(images), world, device=images.device)
    loss_sum = torch.zeros((), device=accelerator.device)
    correct = torch.zeros((), device=accelerator.device, dtype=torch.long)
    for i in range(0, len(idx), batch_size):
        b = idx[i:i + batch_size]
        x = normalize(images[b])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            out = model(x)
        loss_sum += F.cross_entropy(out.float(), labels[b], reduction="sum")
        correct += (out.argmax(1) == labels[b]).sum()
    totals = accelerator.reduce(torch.stack([loss_sum, correct.float()]), reduction="sum")
    model.train()
    return totals[0].item() / len(images), totals[1].item() / len(images)


def train(run_dir: Path, resume: bool = False, started_at: Optional[float] = None) -> dict:
    """Train the run in ``run_dir``; ``started_at``: when this process started (its start event says how long each
    phase of the start-up took: imports, Accelerate, data, model)."""
    marks = [("imports", time.time())]
    run_dir = Path(run_dir)
    cfg = config_from_yaml((run_dir / "config.yaml").read_text(), str(run_dir / "config.yaml"))
    meta = json.loads((run_dir / "meta.json").read_text()) if (run_dir / "meta.json").is_file() else {}
    tc = cfg.train
    precision = resolve_mixed_precision(tc.mixed_precision, cuda_capability())  # auto -> what this host does best
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    accelerator = Accelerator(mixed_precision=precision, log_with="tensorboard", project_dir=str(run_dir),
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))])
    marks.append(("accelerator", time.time()))
    main = accelerator.is_main_process
    events = EventWriter(run_dir / EVENTS_FILE, enabled=main)

    set_seed(tc.seed)  # init and dropout; permutation and augmentation have their own generators
    device = accelerator.device
    if not cfg.data.dir:
        raise DataError("no data directory: set data.dir in the config or pass --data-dir")
    data = load_mnist(cfg.data.dir, cfg.data.train_limit, cfg.data.test_limit).to(device)
    marks.append(("data", time.time()))
    model = build(cfg.model)  # a zoo name, or PATH.py:ClassName from a file of the project
    params = count_params(model)
    check_budget(cfg.model, params, tc.max_params)
    rows = summarize(model)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model.parameters())
    world = accelerator.num_processes
    nodes = node_count(world)
    batch = per_process_batch(tc.batch_size, world)  # train.batch_size is the global batch
    steps = steps_per_epoch(len(data.train_images), batch, world)
    scheduler, sched_when = build_scheduler(cfg, optimizer, steps)
    # prepare() would ask whether the model has DTensor parameters, importing torch.distributed.tensor (1-2.5 s on
    # the dev machine) for a model this trainer built itself: placement is asked for explicitly instead (the same
    # two steps prepare() takes: the model on its device, DDP-wrapped when several processes; then the optimizer)
    model = accelerator.prepare_model(model, device_placement=True)
    optimizer = accelerator.prepare_optimizer(optimizer)
    if tc.compile:
        # torch.compile(module) returns an OptimizedModule, a Module; its stub promises only a Callable.
        model = cast(torch.nn.Module, torch.compile(model))
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    if scheduler is not None:
        accelerator.register_for_checkpointing(scheduler)

    start_epoch = 1
    partial = None  # a mid-epoch checkpoint's per-rank running sums, to continue its epoch exactly
    if resume:
        ckpt = latest_checkpoint(run_dir, accelerator.num_processes)
        if ckpt is None:
            raise RunError(f"{run_dir}: no complete checkpoint to resume from — start a new run instead")
        newest = latest_checkpoint(run_dir)
        if main and newest is not None and newest != ckpt:
            print(f"trainer: {newest.name} was saved by another number of processes mid-epoch; "
                  f"resuming from {ckpt.name}", flush=True)
        accelerator.load_state(str(ckpt))
        start_epoch = state.epoch + 1
        if state.step:
            partial = torch.load(ckpt / f"partial_{accelerator.process_index}.pt", weights_only=True)
    interrupts = Interrupts()
    interrupts.install()
    delay = step_delay()
    if main and delay:
        print(f"trainer: {STEP_DELAY_ENV}={delay:g}: sleeping {delay:g}s after every step (a throttle for tests)",
              flush=True)
    if main:
        accelerator.init_trackers("tensorboard", config={"model": cfg.model, "seed": tc.seed,
                                                         "batch_size": tc.batch_size, "lr": cfg.optimizer.lr,
                                                         "epochs": tc.epochs})
        print_summary(cfg.model, rows, params)
    augment = BatchAugment(cfg.augment) if cfg.augment.active else None
    aug_gen = torch.Generator(device=device)
    events.emit(
        "start", model=cfg.model, params=params, epochs=tc.epochs, steps_per_epoch=steps,
        batch_size=tc.batch_size, per_process_batch=batch, num_processes=world, nodes=nodes, device=str(device),
        device_name=device_name(device), mixed_precision=precision,
        mixed_precision_requested=tc.mixed_precision, start_epoch=start_epoch,
        train_size=len(data.train_images), test_size=len(data.test_images), summary=rows, resumed=resume,
        startup=startup_phases(started_at, marks + [("model", time.time())]),
    )

    stop_reason = "completed"
    for epoch in range(start_epoch, tc.epochs + 1):
        aug_gen.manual_seed(tc.seed * 1_000_003 + epoch * 1009 + accelerator.process_index)
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        skip = 0
        # which training images this rank took this epoch (a mark per image): summed over the ranks at
        # the epoch's end, it shows that every rank trained on its own shard (``distinct_images``)
        covered = torch.zeros(len(data.train_images), device=device)
        if partial is not None:  # continue the epoch a mid-epoch checkpoint stopped in, from its next step
            skip = state.step
            loss_sum = partial["loss_sum"].to(device)
            correct = partial["correct"].to(device)
            seen = int(partial["seen"])
            t0 -= float(partial["seconds"])
            if "aug_gen" in partial:
                aug_gen.set_state(partial["aug_gen"].to(aug_gen.get_state().device))
            state.step, partial = 0, None
        batches = epoch_batches(len(data.train_images), batch, epoch, tc.seed,
                                accelerator.process_index, accelerator.num_processes, device)
        for step, idx in enumerate(batches, 1):
            covered[idx] = 1.0
            if step <= skip:  # taken before the mid-epoch checkpoint this attempt resumed from
                continue
            x = augment(data.train_images[idx], aug_gen) if augment else normalize(data.train_images[idx])
            y = data.train_labels[idx]
            if tc.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with accelerator.autocast():
                out = model(x)
                loss = F.cross_entropy(out, y, label_smoothing=tc.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            if sched_when == "batch":
                scheduler.step()
            loss_sum += loss.detach() * len(idx)
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(idx)
            if delay:
                time.sleep(delay)
            if main and (step % tc.log_every == 0 or step == steps or step == skip + 1):  # the bar shows at once
                elapsed = time.perf_counter() - t0
                events.emit("step", epoch=epoch, step=step, steps=steps, loss=round(loss.item(), 5),
                            lr=optimizer.param_groups[0]["lr"],
                            images_per_second=round(seen * accelerator.num_processes / max(elapsed, 1e-9), 1))
            if step < steps and interrupts.due(step, accelerator):
                stop, save = interrupts.agreed(accelerator)
                if stop or save:
                    interrupts.stop = interrupts.save = False
                    sums = {"loss_sum": loss_sum.detach().cpu(), "correct": correct.detach().cpu(), "seen": seen,
                            "seconds": time.perf_counter() - t0}
                    if augment:
                        sums["aug_gen"] = aug_gen.get_state()
                    path = save_mid_epoch(accelerator, run_dir, state, step, sums, events,
                                          "preempt" if stop else "rebalance")
                    if stop:
                        accelerator.end_training()
                        raise Preempted(path)
        if accelerator.num_processes > 1:
            totals = accelerator.reduce(torch.stack([loss_sum, correct.float()]), reduction="sum")
            loss_sum, correct = totals[0], totals[1]
            covered = accelerator.reduce(covered, reduction="sum")
        train_time = time.perf_counter() - t0
        total_seen = seen * accelerator.num_processes
        test_loss, test_acc = evaluate(model, data.test_images, data.test_labels, tc.eval_batch_size,
                                       accelerator, tc.channels_last)
        lr = optimizer.param_groups[0]["lr"]
        if sched_when == "epoch":
            scheduler.step()
        elif sched_when == "metric":
            scheduler.step(test_acc if cfg.scheduler.mode == "max" else test_loss)
        record = {
            "epoch": epoch, "train_loss": loss_sum.item() / total_seen,
            "train_accuracy": float(correct.item()) / total_seen,
            "test_loss": test_loss, "test_accuracy": test_acc, "lr": lr, "seconds": round(train_time, 3),
            "images_per_second": round(total_seen / train_time, 1),
            # different images trained on, all ranks together: equal to the images seen when the ranks'
            # shards are disjoint (a rank reading another's shard shows here as fewer)
            "distinct_images": int((covered > 0).sum().item()),
        }
        state.epoch = epoch
        state.history.append(record)
        state.train_seconds += train_time
        state.images_seen += total_seen
        is_best = test_acc > state.best_accuracy
        if is_best:
            state.best_accuracy, state.best_epoch = test_acc, epoch
        accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        events.emit("epoch", **record, best=is_best, best_test_accuracy=state.best_accuracy)
        save_checkpoint(accelerator, model, run_dir, state, is_best, tc.keep_checkpoints, events)
        stop, _ = interrupts.agreed(accelerator)  # a stop during the last step: the checkpoint above is the one
        interrupts.stop = False  # (a pending save-and-continue is served at the next step boundary)
        if stop and epoch < tc.epochs:
            accelerator.end_training()
            raise Preempted(f"{CHECKPOINTS}/epoch_{state.epoch:03d}")
        if tc.target_accuracy is not None and test_acc >= tc.target_accuracy:
            stop_reason = "target_accuracy"
            break

    summary = {
        "run_id": meta.get("run_id", run_dir.name), "model": cfg.model, "params": params,
        "epochs_completed": state.epoch, "epochs": tc.epochs, "stop_reason": stop_reason,
        "best_test_accuracy": state.best_accuracy if state.history else None,
        "best_epoch": state.best_epoch,
        "final_test_accuracy": state.history[-1]["test_accuracy"] if state.history else None,
        "train_seconds": round(state.train_seconds, 3),
        "images_per_second": round(state.images_seen / state.train_seconds, 1) if state.train_seconds else None,
        "mixed_precision": precision, "mixed_precision_requested": tc.mixed_precision,
        "num_processes": world, "world_size": world, "nodes": nodes, "global_batch": tc.batch_size,
        "per_process_batch": batch,
        "device": device_name(device), "seed": tc.seed, "code_revision": meta.get("code_revision"),
        "torch": torch.__version__,
        # the bar a sweep's table holds every seed to: the config's target, else the model's claim
        "claim_accuracy": tc.target_accuracy or MODEL_CLAIMS.get(cfg.model),
        "history": state.history,
    }
    if main:
        write_json(run_dir / "summary.json", summary)
        events.emit("finished", **{k: v for k, v in summary.items() if k != "history"})
    accelerator.end_training()
    return summary


def startup_phases(started_at: Optional[float], marks: list[tuple[str, float]]) -> dict[str, float]:
    """Seconds each start-up phase took, from the process's start (``imports``: Python, torch, accelerate...)."""
    out, last = {}, started_at
    for name, at in marks:
        if last is not None:
            out[name] = round(at - last, 3)
        last = at
    return out


def node_count(world: int) -> int:
    """Machines in the run: torchrun gives each node LOCAL_WORLD_SIZE of the WORLD_SIZE processes."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or world)
    return max(1, world // max(1, local))


def collect_rank_files(accelerator: Accelerator, path: Path) -> None:
    """On several nodes each rank wrote its own files of a checkpoint (its RNG state, its running sums) on its
    own node's disk; the head's copy, the one that goes to the store and that every node restores from, gets
    all of them (a few KB per rank, over the process group). One node shares one folder: nothing to do."""
    if node_count(accelerator.num_processes) == 1:
        return
    from accelerate.utils import gather_object

    rank = accelerator.process_index
    mine = {p.name: p.read_bytes() for p in path.iterdir()
            if p.is_file() and p.stem.endswith(f"_{rank}") and p.suffix in (".pkl", ".pt")
            and not p.name.startswith("custom_checkpoint_")}  # the head saves the shared ones itself
    every = gather_object([(rank, mine)])
    if accelerator.is_main_process:
        for other, files in every:
            for name, data in files.items():
                if other != rank and "/" not in name and name.endswith((f"_{other}.pkl", f"_{other}.pt")):
                    tmp = path / (name + ".tmp")
                    tmp.write_bytes(data)
                    os.replace(tmp, path / name)


def drop_node_copy(accelerator: Accelerator, path: Path) -> None:
    """Another node than the head: its part of a checkpoint is in the head's copy now (collect_rank_files);
    a new attempt restores the whole checkpoint on every node, so nothing of it stays here."""
    if node_count(accelerator.num_processes) > 1 and not accelerator.is_main_process \
            and accelerator.is_local_main_process:
        shutil.rmtree(path, ignore_errors=True)


def plain_module(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """The model inside DDP's wrapper. ``accelerator.unwrap_model`` asks ``hasattr(torch, "_dynamo")``, which
    imports torch._dynamo (3.6 s on the dev machine) in a run that never compiles; only a compiled model needs it."""
    if "torch._dynamo" in sys.modules:  # compiled (or compiling): accelerate knows every wrapper
        return accelerator.unwrap_model(model)
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def save_checkpoint(accelerator: Accelerator, model, run_dir: Path, state: TrainState, is_best: bool, keep: int,
                    events: EventWriter) -> None:
    path = run_dir / CHECKPOINTS / f"epoch_{state.epoch:03d}"
    accelerator.save_state(str(path))
    collect_rank_files(accelerator, path)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if is_best:
            from safetensors.torch import save_file

            state_dict = plain_module(model, accelerator).state_dict()
            weights = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
            tmp = run_dir / "model.safetensors.tmp"
            save_file(weights, str(tmp),
                      metadata={"epoch": str(state.epoch), "test_accuracy": str(state.best_accuracy)})
            os.replace(tmp, run_dir / "model.safetensors")
        files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
        write_json(path / MARKER, {"epoch": state.epoch, "files": files, "best": is_best})
        prune_checkpoints(run_dir, keep, state.best_epoch)
        events.emit("checkpoint", epoch=state.epoch, path=f"{CHECKPOINTS}/{path.name}", best=is_best)
    accelerator.wait_for_everyone()
    drop_node_copy(accelerator, path)


def save_mid_epoch(accelerator: Accelerator, run_dir: Path, state: TrainState, step: int, sums: dict,
                   events: EventWriter, why: str) -> str:
    """A checkpoint after ``step`` steps of epoch ``state.epoch + 1``: save_state (model, optimizer,
    scheduler, RNG, TrainState with ``step``) plus each rank's running sums and augmentation
    generator, marker last. Resuming from it continues that epoch at step ``step + 1`` exactly."""
    epoch = state.epoch + 1
    path = run_dir / CHECKPOINTS / f"epoch_{epoch:03d}_step_{step:05d}"
    state.step = step
    try:
        accelerator.save_state(str(path))
    finally:
        state.step = 0
    torch.save(sums, path / f"partial_{accelerator.process_index}.pt")
    collect_rank_files(accelerator, path)
    accelerator.wait_for_everyone()
    rel = f"{CHECKPOINTS}/{path.name}"
    if accelerator.is_main_process:
        files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
        write_json(path / MARKER, {"epoch": state.epoch, "step": step, "processes": accelerator.num_processes,
                                   "files": files, "best": False})
        events.emit("checkpoint", epoch=state.epoch, step=step, path=rel, best=False, reason=why)
    accelerator.wait_for_everyone()
    drop_node_copy(accelerator, path)
    return rel


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"{device.type} ({n} thread{'s' if n != 1 else ''})"


def print_summary(name: str, rows: list[dict], params: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{name}: {params:,} parameters", show_lines=False)
    table.add_column("Layer (type)")
    table.add_column("Output Shape")
    table.add_column("Param #", justify="right")
    for r in rows:
        table.add_row(r["layer"], str(r["output_shape"]), f"{r['params']:,}")
    Console(width=80, force_terminal=False).print(table)
