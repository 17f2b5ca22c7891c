"""``mnist-launch``: one small function per command; the work happens in the orchestrator.

Errors the user can fix print ``error: <what> — <what to do>`` to stderr and exit non-zero;
a traceback only with ``MNIST_LAUNCH_DEBUG=1``.

    mnist-launch train configs/model3.yaml --local --set train.epochs=1
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from core import settings
from core.errors import ConfigError, LaunchError

if TYPE_CHECKING:
    from infra.store import RunFiles
    from launcher.targets import Attempt, Target

app = typer.Typer(
    name="mnist-launch",
    help="Train compact MNIST CNNs on an EC2 GPU, or locally with --local.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="The MNIST files.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# Not a terminal (CI, pipes): a fixed wide layout instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

STORE_HELP = "artifact store: a folder (runs go to STORE/runs/RUN_ID) or s3://bucket/prefix [default: .]"


def _follow(run_id: str, files: "RunFiles", follow: bool = True, offset: int = 0,
            on_offset: Optional[Callable[[int], None]] = None) -> Optional[dict]:
    from launcher.live import RunView, follow_files

    view = RunView(console, live=follow)
    try:
        return follow_files(files, view, follow=follow, offset=offset, on_offset=on_offset)
    except KeyboardInterrupt:
        view.stop()
        console.print(
            f"\n[yellow]detached[/]: {run_id} keeps running. Re-attach: mnist-launch logs {run_id} --follow · "
            f"stop: mnist-launch cancel {run_id}"
        )
        raise typer.Exit(0)


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="recipe YAML, e.g. configs/model3.yaml"),
    local: bool = typer.Option(False, "--local", help="run on this machine; artifacts in a folder (no AWS)"),
    set_: List[str] = typer.Option([], "--set", help="override a config key: --set train.epochs=3 (repeatable)"),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="name the run [default: CONFIG-DATE-TIME-XXXX]"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir",
                                           help="folder with the MNIST IDX files [default: data.dir or ./data]"),
    processes: int = typer.Option(1, "--processes", help="training processes (accelerate launch --num_processes)"),
    nodes: Optional[int] = typer.Option(None, "--nodes",
                                        help="machines training the run together [default: launch.nodes, 1]; "
                                             "with --local, that many nodes on this machine"),
    detach: bool = typer.Option(False, "--detach", help="start the run and return; follow later with `logs --follow`"),
    resume: Optional[str] = typer.Option(None, "--resume", help="continue RUN_ID from its latest checkpoint"),
    name: Optional[str] = typer.Option(None, "--name", help="cluster to run on [default: launch.name, mnist]"),
    instance: Optional[str] = typer.Option(None, "--instance", help="instance type if the cluster has to be created"),
    identity: Optional[str] = typer.Option(None, "--identity",
                                           help="private key for the cluster [default: the one it was made with]"),
    spot: bool = typer.Option(False, "--spot", help="a spot instance if the cluster is created; implies --recover"),
    recover: bool = typer.Option(False, "--recover",
                                 help="if the instance is lost, replace it and resume from the store"),
    max_recoveries: int = typer.Option(3, "--max-recoveries", help="replacements before giving up"),
) -> None:
    """Train a recipe: on this machine with --local, else on the named EC2 cluster."""
    from launcher import lifecycle

    spec = lifecycle.RunSpec(config=str(config) if config else None, overrides=list(set_), run_id=run_id,
                             data_dir=data_dir, resume=resume)
    if local:
        from launcher.targets.local import LocalTarget

        target: "Target" = LocalTarget(store, processes=processes, nodes=nodes or 1)
        attempt = lifecycle.start(target, spec)
        console.print(f"run [bold]{attempt.run_id}[/] → {attempt.run_dir}")
        failed = f"full log: {attempt.run_dir}/train.log"
    else:
        if spot:
            spec.overrides.append("launch.spot=true")
        if nodes is not None:
            spec.overrides.append(f"launch.nodes={nodes}")
        recover = recover or spot
        if recover and detach:
            raise ConfigError("--recover/--spot keep watching the run to replace a lost instance — drop --detach")
        if processes != 1:
            raise ConfigError("--processes is for --local runs — on an instance set launch.gpus (default: every GPU)")
        from launcher.cloud_cli import terminal_confirm
        from launcher.targets.ec2 import CloudFlags, EC2Target

        target = EC2Target(CloudFlags(store=store, name=name, instance=instance, identity=identity, data_dir=data_dir,
                                      recover=recover),
                           console, note=_note, confirm=terminal_confirm())
        if recover and not resume and config:
            from core.config import load_config

            if not (store or load_config(str(config), spec.overrides).store or "").startswith("s3://"):
                raise ConfigError("--recover/--spot resume a lost run from its checkpoints in S3 — "
                                  "pass --store s3://bucket/prefix")
        t0 = time.monotonic()
        attempt = lifecycle.start(target, spec)
        _print_cloud_start(attempt, time.monotonic() - t0)
        failed = f"full log: mnist-launch logs {attempt.run_id} --raw"
    if detach:
        console.print(f"detached. Follow: mnist-launch logs {attempt.run_id} --follow · "
                      f"stop: mnist-launch cancel {attempt.run_id}")
        target.close(attempt)
        return
    end = lifecycle.attach(target, attempt, lambda files, offset, shown: _follow(attempt.run_id, files, offset=offset,
                                                                                on_offset=shown), _note,
                           recover=spec if (recover and not local) else None, max_recoveries=max_recoveries)
    if end and end.get("state") != "succeeded":
        raise LaunchError(f"run {attempt.run_id} {end.get('state')}: {end.get('reason')} — {failed}")
    if end and not local and attempt.store:
        console.print(f"artifacts: {attempt.store}/runs/{attempt.run_id} (fetch: mnist-launch results {attempt.run_id} "
                      f"--store {attempt.store})")


def _note(message: str) -> None:
    console.print(f"[yellow]{message}[/]")


def _print_cloud_start(attempt: "Attempt", seconds: float) -> None:
    tm, info = attempt.info["timings"], attempt.info
    parts = (f"connect {tm['connect']:.2f}s · sync {tm['sync']:.2f}s, data {tm['data']:.2f}s, setup {tm['setup']:.2f}s "
             f"in parallel {tm['prepare']:.2f}s · start {tm['start']:.2f}s")
    where = (f"{attempt.store}/runs/{attempt.run_id}" if attempt.store
             else f"{info['cluster']}:{attempt.run_dir} (no --store: kept on the instance only)")
    console.print(f"run [bold]{attempt.run_id}[/] on {info['cluster']} ({info['instance_id']}) → {where}")
    console.print(f"[dim]started in {seconds:.2f}s ({parts})[/]")


@app.command()
def logs(
    run_id: str = typer.Argument(..., help="the run to show"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep following until the run ends"),
    raw: bool = typer.Option(False, "--raw", help="print train.log (the trainer's output) instead of events"),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Show a run's progress from its events (re-attaches to a running run with --follow)."""
    from launcher.lifecycle import open_files
    from launcher.live import read_status

    files = open_files(run_id, store, note=_note)
    if raw:
        _print_raw_log(files, follow)
        return
    end = _follow(run_id, files, follow=follow)
    if end is None and not follow:
        console.print(f"[dim]state: {read_status(files).get('state', 'unknown')}[/]")


def _print_raw_log(files: "RunFiles", follow: bool) -> None:
    import codecs

    from core.runstate import TERMINAL
    from launcher.live import read_status

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character split across reads
    offset = 0
    first, longest = (0.3, 0.3) if not files.mirrored else files.poll
    wait = first
    while True:
        chunk = files.read_from("train.log", offset)
        if chunk:
            sys.stdout.write(decoder.decode(chunk))
            sys.stdout.flush()
            offset += len(chunk)
            wait = first
        elif not follow or read_status(files).get("state") in TERMINAL:
            return
        else:
            time.sleep(wait)
            wait = min(wait * 2, longest)


@app.command()
def cancel(
    run_id: str = typer.Argument(..., help="the run (or sweep) to stop"),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Stop a running run (its checkpoints so far are kept), or every run of a sweep."""
    from launcher.lifecycle import cancel_anywhere
    from launcher.sweep_cli import cancel as cancel_sweep
    from launcher.sweep_cli import is_sweep

    if is_sweep(run_id, store):
        cancel_sweep(run_id, store)
        return
    status = cancel_anywhere(run_id, store)
    console.print(f"{run_id}: {status.get('state')}" + (f" ({status.get('reason')})" if status.get("reason") else ""))


@app.command()
def runs(
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    compare: Optional[List[str]] = typer.Option(None, "--compare",
                                                help="RUN_ID to compare (repeat, or list them after it)"),
    more: Optional[List[str]] = typer.Argument(None, hidden=True),
    plot: Path = typer.Option(Path("compare.png"), "--plot",
                              help="where --compare writes its overlay of test error curves"),
) -> None:
    """List the runs in the store with their results; --compare puts chosen runs side by side."""
    from launcher.live import pct
    from launcher.orchestrator import list_runs

    if compare:
        _compare([*compare, *(more or [])], store, plot, as_json)
        return
    if more:
        raise ConfigError(f"unexpected argument {more[0]!r} — to compare runs: mnist-launch runs --compare RUN_A RUN_B")
    rows = list_runs(store)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no runs yet — start one with `mnist-launch train configs/model3.yaml --local`")
        return
    table = Table()
    for col in ("run", "model", "params", "state", "epochs", "final acc", "best acc", "train time", "img/s"):
        table.add_column(col, justify="right" if col not in ("run", "model", "state") else "left")
    for r in rows:
        table.add_row(
            r["run_id"], r["model"] or "-", f"{r['params']:,}" if r["params"] else "-", r["state"],
            f"{r['epochs_completed']}/{r['epochs']}", pct(r["final_test_accuracy"]), pct(r["best_test_accuracy"]),
            f"{r['train_seconds']:.1f}s" if r["train_seconds"] else "-",
            f"{r['images_per_second']:,.0f}" if r["images_per_second"] else "-",
        )
    console.print(table)


def _compare(run_ids: list[str], store: Optional[str], plot: Path, as_json: bool) -> None:
    from launcher.compare import compare_runs
    from launcher.live import pct

    if len(run_ids) < 2:
        raise ConfigError("--compare needs at least two runs: mnist-launch runs --compare RUN_A RUN_B")
    differing, columns, png = compare_runs(run_ids, store, plot)
    if as_json:
        print(json.dumps({"differing_settings": differing, "runs": [{k: c[k] for k in ("run_id", "settings", "results")}
                                                                     for c in columns], "plot": str(png)}, indent=2))
        return
    table = Table(title="runs side by side")
    table.add_column("")
    for c in columns:
        table.add_column(c["run_id"], justify="right")
    for key in ["model", *differing]:
        table.add_row(key, *[str(c["settings"].get(key)) for c in columns])
    rows: list[tuple[str, str, Callable[[Any], str]]] = [
        ("params", "params", lambda v: f"{v:,}" if v else "-"),
        ("state", "state", str),
        ("epochs", "epochs_completed", str),
        ("final test acc", "final_test_accuracy", pct),
        ("best test acc", "best_test_accuracy", pct),
        ("train time", "train_seconds", lambda v: f"{v:.1f}s" if v else "-"),
        ("img/s", "images_per_second", lambda v: f"{v:,.0f}" if v else "-"),
        ("device", "device", str),
    ]
    for label, key, fmt in rows:
        table.add_row(label, *[fmt(c["results"].get(key)) for c in columns])
    console.print(table)
    console.print(f"test error curves: {png}")


@app.command()
def results(
    run_id: str = typer.Argument(..., help="the run to fetch"),
    dest: Path = typer.Option(Path("results"), "--dest", help="folder to copy the run into"),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Copy a run's artifacts (checkpoints, metrics, log, curves) to a local folder."""
    from infra.store import open_store

    out = open_store(store).download(run_id, dest)
    console.print(f"{run_id} → {out}")


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """The model zoo: one recipe per seed, with parameter counts and the seed's claim."""
    from trainer.zoo import ZOO  # the counts are in the catalog (checked against the built models): no torch

    rows: list[dict[str, Any]] = [
        {"name": e.name, "params": e.params, "budget": e.budget, "seed": e.seed, "claim": e.claim,
         "config": f"configs/{e.name}.yaml", "class": e.cls}
        for e in ZOO.values()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("name", "params", "budget", "seed", "claim"):
        table.add_column(col, justify="right" if col in ("params", "budget") else "left")
    for r in rows:
        table.add_row(r["name"], f"{r['params']:,}", f"{r['budget']:,}", r["seed"], r["claim"])
    console.print(table)


@data_app.command("download")
def data_download(
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="where to put the four *-ubyte.gz files"),
) -> None:
    """Fetch the MNIST files a folder lacks (MNIST_LAUNCH_DATA_MIRRORS, else torchvision's mirrors), verified."""
    from launcher.datafetch import ensure_mnist, mirrors_for

    counts = ensure_mnist(data_dir, mirrors_for(None), err_console)
    console.print(f"MNIST is in {data_dir}: " + ", ".join(f"{k}: {v:,}" for k, v in counts.items()))


@data_app.command("check")
def data_check(data_dir: Path = typer.Option(Path("data"), "--data-dir", help="folder to check")) -> None:
    """Check the four MNIST files (headers and sizes) without loading them."""
    from trainer.data import check_dir

    counts = check_dir(data_dir)
    console.print(", ".join(f"{k}: {v:,}" for k, v in counts.items()))


def _register_cloud_commands(app: typer.Typer) -> None:
    """`up`, `status`, `down`, `ssh`; `sweep`. Their dependencies are the project's own: an import that fails is a
    broken install or a bug, and stops the CLI with it rather than leaving it without those commands."""
    import importlib

    importlib.import_module("launcher.cloud_cli").register(app)
    importlib.import_module("launcher.sweep_cli").register(app)


_register_cloud_commands(app)


def _usage_errors() -> tuple:
    """Bad flags and arguments: typer >= 0.20 vendors click, older ones use it directly."""
    classes: list[type[Exception]] = [typer.TyperException] if hasattr(typer, "TyperException") else []
    try:
        import click

        classes.append(click.ClickException)
    except ImportError:
        pass
    return tuple(classes)


def main(argv: Optional[list[str]] = None) -> int:
    debug = settings.debug()
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="mnist-launch")
        return rc if isinstance(rc, int) else 0  # typer.Exit(n) comes back as n without standalone mode
    except LaunchError as err:
        if debug:
            raise
        if err.detail:  # the frames of the user's own code (a model file), above the one line
            err_console.print(err.detail.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
        err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        return err.exit_code
    except typer.Exit as ex:
        return ex.exit_code
    except typer.Abort:
        err_console.print("aborted", markup=False)
        return 130
    except _usage_errors() as err:  # bad flags and arguments
        if debug:
            raise
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `mnist-launch` or `mnist-launch data`
            print(err.ctx.get_help() if getattr(err, "ctx", None) else err.format_message())
            return 0
        cmd = (f" {err.ctx.command_path.split(' ', 1)[1]}"
               if getattr(err, "ctx", None) and " " in err.ctx.command_path else "")
        err_console.print(f"error: {err.format_message()} — see `mnist-launch{cmd} --help`", markup=False,
                          highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        if debug:
            raise
        err_console.print(
            f"error: unexpected {type(err).__name__}: {err} — rerun with MNIST_LAUNCH_DEBUG=1 for the traceback "
            "and report it", markup=False, highlight=False, soft_wrap=True,
        )
        return 1


def entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
