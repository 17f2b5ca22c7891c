"""`mnist-launch sweep`: start a grid of runs, follow its table, re-attach, cancel, resume.

    mnist-launch sweep configs/model3.yaml --local --grid train.seed=1,2,3 --grid optimizer.lr=0.01,0.02 --parallel 2
    mnist-launch sweep status SWEEP_ID [--json]      # the live table again, then the result per setting
    mnist-launch sweep cancel SWEEP_ID               # every run stops (recorded cancelled); nothing more starts
    mnist-launch sweep resume SWEEP_ID               # runs that finished are not run again
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from core.errors import ConfigError, LaunchError
from launcher.sweep import Place, SweepSpec, active, read_plan, runner_states

console = Console()
STORE_HELP = "the store the sweep's runs are in: a folder (default .) or s3://bucket/prefix"


class _StartByDefault(TyperGroup):
    """`sweep CONFIG ...` starts a sweep; `sweep status|cancel|resume ID` act on one."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["start", *args]
        return super().resolve_command(ctx, args)


app = typer.Typer(cls=_StartByDefault, no_args_is_help=True, add_completion=False,
                  help="Sweeps: a grid of settings and seeds, each an ordinary run, queued next to the runs.\n\n"
                       "Start one: mnist-launch sweep CONFIG --grid KEY=V1,V2 [--grid ...] (--local | --name CLUSTER) "
                       "[--parallel K] (see `mnist-launch sweep CONFIG --help`).")


def _find(sweep_id: str, store: Optional[str]) -> tuple[Place, dict[str, Any]]:
    """The sweep's place and plan: a folder store's own, or an S3 store's copy of the plan (its cluster)."""
    from launcher.sweep import local_place

    if (store or "").startswith("s3://"):
        from launcher.sweep_cloud import cloud_place_of, stored_plan

        plan = stored_plan(store or "", sweep_id)
        return cloud_place_of(store, None, None, plan), plan
    place = local_place(store)
    return place, read_plan(place, sweep_id)


def is_sweep(sweep_id: str, store: Optional[str]) -> bool:
    """Whether ``sweep_id`` names a sweep in the store (its plan is there): `cancel ID` stops it."""
    from infra.store import open_store, valid_run_id

    if not valid_run_id(sweep_id):
        return False
    try:
        return open_store(store).read_text(sweep_id, "plan.json") is not None
    except LaunchError:
        return False  # the store cannot say: `cancel` goes on as for a run, and says what is wrong


@app.command("start", hidden=True)
def start(
    config: Path = typer.Argument(..., help="a recipe YAML, e.g. configs/model3.yaml"),
    grid: List[str] = typer.Option(..., "--grid", help="KEY=V1,V2,... (the keys of --set; repeat for a product)"),
    set_: List[str] = typer.Option([], "--set", help="KEY=VALUE for every run"),
    local: bool = typer.Option(False, "--local", help="run on this machine (runs in the --store folder)"),
    name: Optional[str] = typer.Option(None, "--name", help="the cluster to run on [default: launch.name]"),
    parallel: int = typer.Option(1, "--parallel", help="runs at once per GPU (on a CPU host: at once, cores split)"),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="MNIST folder (or s3:// on a cluster)"),
    sweep_id: Optional[str] = typer.Option(None, "--sweep-id", help="the sweep's id [default: made from the config]"),
    identity: Optional[str] = typer.Option(None, "--identity", help="private key for the cluster"),
    detach: bool = typer.Option(False, "--detach", help="start the sweep and return"),
    as_json: bool = typer.Option(False, "--json", help="at the end, print the result as JSON"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="where the curves' overlay goes"),
) -> None:
    """Start a sweep: every combination of the --grid values is one ordinary run."""
    from launcher import sweep

    out = Console(stderr=True) if as_json else console  # --json: stdout holds only the JSON
    spec = SweepSpec(str(config), list(grid), list(set_), parallel, data_dir, sweep_id)
    if local:
        from launcher.targets.local import LocalTarget

        place = sweep.local_place(store)
        plan = sweep.start(spec, place, LocalTarget(store).load_config, sweep.local_prepare(data_dir))
    else:
        from launcher.sweep_cloud import start_on_cluster

        place, plan = start_on_cluster(spec, store, name, identity, out)
    out.print(f"sweep [bold]{plan['sweep_id']}[/]: {len(plan['runs'])} runs, {plan['parallel']} at a time"
                  + (f" on each of {plan['nodes']} nodes" if plan["nodes"] > 1 else "")
                  + f" · plan: {place.sweep_dir(plan['sweep_id'])}/plan.json")
    again = f"mnist-launch sweep status {plan['sweep_id']}" + (f" --store {store}" if store else "")
    if detach:
        out.print(f"detached. Follow: {again} · stop: mnist-launch sweep cancel {plan['sweep_id']}"
                      + (f" --store {store}" if store else ""))
        return
    _follow_and_report(place, plan, True, as_json, plot, again)


@app.command("status")
def status(
    sweep_id: str = typer.Argument(..., help="the sweep to show"),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="keep the table live until the sweep ends"),
    as_json: bool = typer.Option(False, "--json", help="print the runs and the result as JSON"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="where the curves' overlay goes"),
    as_markdown: bool = typer.Option(False, "--markdown", help="print only the result, as a Markdown table"),
) -> None:
    """Re-attach to a sweep: its live table (a row per run), then the result (a row per setting)."""
    place, plan = _find(sweep_id, store)
    if as_markdown:
        from launcher.sweep_table import markdown, results

        print(markdown(results(place, plan)))
        return
    _follow_and_report(place, plan, follow, as_json, plot, f"mnist-launch sweep status {sweep_id}"
                       + (f" --store {store}" if store else ""))


@app.command("cancel")
def cancel(
    sweep_id: str = typer.Argument(..., help="the sweep to stop"),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Stop a sweep: its running runs end cancelled (checkpoints kept), the queued ones never start."""
    from launcher.sweep import cancel as cancel_sweep

    place, plan = _find(sweep_id, store)
    cancel_sweep(place, sweep_id)
    _report(place, plan, as_json=False, plot=None)


@app.command("resume")
def resume(
    sweep_id: str = typer.Argument(..., help="the sweep to continue"),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    parallel: Optional[int] = typer.Option(None, "--parallel", help="runs at once [default: the sweep's]"),
    detach: bool = typer.Option(False, "--detach", help="start the runners and return"),
) -> None:
    """Continue a sweep: runs that finished are not run again; cancelled ones go on from their checkpoint."""
    from launcher.sweep import resume as resume_sweep

    if parallel is not None and parallel < 1:
        raise ConfigError(f"--parallel {parallel}: must be at least 1")
    place, _plan = _find(sweep_id, store)
    plan = resume_sweep(place, sweep_id, parallel)
    console.print(f"sweep [bold]{sweep_id}[/] resumed")
    if not detach:
        _follow_and_report(place, plan, True, False, None, f"mnist-launch sweep status {sweep_id}")


def _follow_and_report(place: Place, plan: dict[str, Any], follow: bool, as_json: bool, plot: Optional[Path],
                       again: str) -> None:
    from rich.live import Live

    from launcher.sweep_table import SweepWatch, runs_table

    watch = SweepWatch(place, plan)
    live = None if as_json or not console.is_terminal else Live(console=console, refresh_per_second=2)
    try:
        if live is not None:
            live.start()
        while True:
            runners = runner_states(place, plan)
            going = active(runners)
            rows = watch.poll()  # after the runners: a runner seen ended has its runs' ends written
            if live is not None:
                live.update(runs_table(plan, rows, runners))
            if not follow or not going:
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        if live is not None:
            live.stop()
        console.print(f"detached; the sweep goes on. Follow: {again}")
        return
    finally:
        if live is not None:
            live.stop()
    if not as_json and live is None:
        console.print(runs_table(plan, rows, runners))
    if going:
        if not as_json:
            console.print(f"[dim]still running: {again}[/]")
        else:
            print(json.dumps({"sweep_id": plan["sweep_id"], "running": True, "runs": rows}, indent=2))
        return
    dead = [r for r in runners if r.get("state") not in ("finished", "cancelled")]
    _report(place, plan, as_json, plot, rows)
    failed = [r for r in rows if r["state"] == "failed"]
    if dead:
        raise LaunchError(f"sweep {plan['sweep_id']}: the runner of node {dead[0]['node']} stopped without finishing "
                          f"— continue it with `mnist-launch sweep resume {plan['sweep_id']}`")
    if failed:
        raise LaunchError(f"sweep {plan['sweep_id']}: {len(failed)} of {len(rows)} runs failed "
                          f"({failed[0]['run_id']}: {failed[0].get('reason')}) — `mnist-launch logs RUN_ID --raw` "
                          "shows a run's log")


def _report(place: Place, plan: dict[str, Any], as_json: bool, plot: Optional[Path],
            rows: Optional[list[dict[str, Any]]] = None) -> None:
    from launcher.sweep_table import SweepWatch, results, results_table
    from launcher.sweep_table import plot as plot_curves

    settings = results(place, plan)
    out = plot or _default_plot(place, plan)
    png = plot_curves(settings, out)
    if as_json:
        rows = rows if rows is not None else SweepWatch(place, plan).poll()
        print(json.dumps({"sweep_id": plan["sweep_id"], "running": False, "runs": rows,
                          "settings": [{k: v for k, v in s.items() if k != "history"} for s in settings],
                          "plot": str(png)}, indent=2))
        return
    console.print(results_table(settings, title=f"sweep {plan['sweep_id']}: a row per setting (mean ± std over seeds)"))
    console.print(f"test-accuracy curves: {png}")


def _default_plot(place: Place, plan: dict[str, Any]) -> Path:
    """Beside the runs for a folder store; for a cluster's, in this machine's MNIST_LAUNCH_HOME/sweeps/."""
    if plan.get("where", {}).get("kind") != "cloud":
        return Path(place.sweep_dir(plan["sweep_id"])) / "curves.png"
    from infra.home import launch_home

    return launch_home() / "sweeps" / f"{plan['sweep_id']}-curves.png"


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="sweep")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
