"""curves.png and the `runs --compare` overlay: test error on a log axis, the claim and target as dashed lines at
their errors, the best epoch starred, the learning rate under it; drawn from epoch records alone."""

from __future__ import annotations

import json

import pytest

from infra.store import LocalStore
from launcher.compare import compare_runs, overlay_runs
from trainer.curves import Run, curves_figure, error_floor, overlay_figure, write_curves

PNG = b"\x89PNG\r\n\x1a\n"
# a run that peaks at epoch 4 (99.48%) and ends a little lower; its learning rate falls every epoch
ACCS = [0.962, 0.985, 0.9921, 0.9948, 0.9943, 0.9946]
LRS = [0.05, 0.04, 0.02, 0.01, 0.004, 0.0005]


def history(accs=ACCS, lrs=LRS) -> list[dict]:
    return [{"epoch": n, "train_loss": 0.5 / n, "test_loss": 0.3 / n, "train_accuracy": a - 0.003,
             "test_accuracy": a, "lr": lr, "seconds": 1.0} for n, (a, lr) in enumerate(zip(accs, lrs), 1)]


def lines(fig, gid: str) -> list:
    return [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == gid]


def the(fig, gid: str):
    found = lines(fig, gid)
    assert len(found) == 1, f"{len(found)} lines with gid {gid!r}"
    return found[0]


def test_the_figure_shows_test_error_on_a_log_axis_with_the_claim_the_target_the_best_epoch_and_the_lr():
    fig = curves_figure(history(), target=0.995, claim=0.994)
    best = the(fig, "best")
    err = best.axes
    assert err.get_yscale() == "log"
    test = next(line for line in err.get_lines() if line.get_label() == "test")
    assert list(test.get_xdata()) == [1, 2, 3, 4, 5, 6]
    assert list(test.get_ydata()) == pytest.approx([100 * (1 - a) for a in ACCS])
    assert list(best.get_xdata()) == [4] and list(best.get_ydata()) == pytest.approx([0.52])
    assert "99.48%" in best.get_label() and "epoch 4" in best.get_label()
    claim, target = the(fig, "claim"), the(fig, "target")
    assert claim.axes is err and list(claim.get_ydata()) == pytest.approx([0.6, 0.6])
    assert target.axes is err and list(target.get_ydata()) == pytest.approx([0.5, 0.5])
    assert "99.4%" in claim.get_label() and "99.5%" in target.get_label()
    lo, hi = err.get_ylim()
    assert lo < 0.5 and hi > 100 * (1 - ACCS[0])  # the target line and the first epoch are both in view
    lr = the(fig, "lr")
    assert lr.axes is not err and list(lr.get_xdata()) == [1, 2, 3, 4, 5, 6] and list(lr.get_ydata()) == LRS
    assert lr.axes.get_yscale() == "log"  # the rate spans two decades
    assert lr.axes.get_shared_x_axes().joined(lr.axes, err)


def test_write_curves_replaces_the_png_whole_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "curves.png"
    path.write_bytes(b"the previous drawing")
    write_curves(history(), path, target=None, claim=0.994)
    assert path.read_bytes()[:8] == PNG
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_a_claim_equal_to_the_target_is_one_line_and_none_draws_none():
    fig = curves_figure(history(), target=0.994, claim=0.994)
    line = the(fig, "claim = target")
    assert list(line.get_ydata()) == pytest.approx([0.6, 0.6])
    assert not lines(fig, "claim") and not lines(fig, "target")
    fig = curves_figure(history())
    assert not lines(fig, "claim") and not lines(fig, "target") and not lines(fig, "claim = target")


def test_an_error_of_zero_is_drawn_at_half_an_image_and_said_so():
    accs = [0.97, 0.99, 1.0]
    fig = curves_figure(history(accs, LRS[:3]), claim=0.994, test_size=200)
    floor = error_floor(200)
    assert floor == pytest.approx(0.25)  # half of one image in 200, in %
    best = the(fig, "best")
    assert list(best.get_xdata()) == [3] and list(best.get_ydata()) == pytest.approx([floor])
    assert best.axes.get_ylim()[0] > 0 and "0 drawn at 0.25" in best.axes.get_ylabel()


def test_one_epoch_draws_a_point_in_the_middle_of_its_axis():
    fig = curves_figure(history(ACCS[:1], LRS[:1]), claim=0.95)
    best = the(fig, "best")
    assert list(best.get_xdata()) == [1]
    assert best.axes.get_xlim() == pytest.approx((0.5, 1.5))


def test_records_without_a_learning_rate_are_left_out_of_its_panel():
    h = history()
    for record in h[:2]:
        del record["lr"]
    h[2]["lr"] = None
    lr = the(curves_figure(h), "lr")
    assert list(lr.get_xdata()) == [4, 5, 6] and list(lr.get_ydata()) == LRS[3:]

    fig = curves_figure([{k: v for k, v in r.items() if k != "lr"} for r in history()])
    assert not lines(fig, "lr")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "learning rate not recorded" in texts


def test_the_overlay_draws_one_line_for_a_shared_claim_and_one_per_run_where_targets_differ():
    a = Run("a", history(), claim=0.994, target=0.995)
    b = Run("b", history([0.97, 0.99, 0.9955, 0.9951], LRS[:4]), claim=0.994, target=0.996)
    fig = overlay_figure([a, b])
    claim = the(fig, "claim")
    err = claim.axes
    assert err.get_yscale() == "log" and list(claim.get_ydata()) == pytest.approx([0.6, 0.6])
    assert claim.get_label().startswith("claim 99.4%")  # shared: not tied to a run
    targets = sorted(lines(fig, "target"), key=lambda line: line.get_ydata()[0])
    assert [t.get_ydata()[0] for t in targets] == pytest.approx([0.4, 0.5])
    assert targets[0].get_label().startswith("b: target") and targets[1].get_label().startswith("a: target")
    assert targets[0].get_color() != targets[1].get_color()
    stars = {line.get_label().split(":")[0]: list(line.get_xdata()) for line in lines(fig, "best")}
    assert stars == {"a": [4], "b": [3]}
    per_run = {line.get_label(): list(line.get_ydata()) for line in err.get_lines() if line.get_label() in ("a", "b")}
    assert per_run["b"] == pytest.approx([3.0, 1.0, 0.45, 0.49])
    assert len(lines(fig, "lr")) == 2

    same = overlay_figure([a, Run("c", history(), claim=0.994, target=0.995)])
    assert len(lines(same, "claim")) == 1 and len(lines(same, "target")) == 1


def test_compare_draws_each_runs_claim_and_target_from_its_config(tmp_path):
    store = LocalStore(tmp_path / "store")
    for run_id, model, target, limit in (("a", "model3", None, None), ("b", "one_epoch", 0.99, 500)):
        d = store.run_dir(run_id)
        d.mkdir(parents=True)
        config = {"model": model, "train": {"epochs": 6, "target_accuracy": target}, "data": {"test_limit": limit}}
        (d / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
        (d / "summary.json").write_text(json.dumps({"history": history()}))
    out = tmp_path / "plots" / "cmp.png"
    _, columns, png = compare_runs(["a", "b"], str(store.root), out)
    assert png == out and out.read_bytes()[:8] == PNG
    assert [(c["claim"], c["target"], c["test_size"]) for c in columns] == [(0.994, None, 10_000), (0.95, 0.99, 500)]
    fig = overlay_figure(overlay_runs(columns))
    claims = sorted(lines(fig, "claim"), key=lambda line: line.get_ydata()[0])
    assert [c.get_ydata()[0] for c in claims] == pytest.approx([0.6, 5.0])  # the models' claims differ: one each
    assert claims[0].get_label().startswith("a: claim") and claims[1].get_label().startswith("b: claim")
    assert list(the(fig, "target").get_ydata()) == pytest.approx([1.0, 1.0])


def test_the_agents_painter_draws_from_the_epoch_events_with_the_runs_claim_target_and_test_size(tmp_path,
                                                                                                  monkeypatch):
    """The agent draws curves.png (infra/curves.py): from events.jsonl, throttled while training, the last planned
    epoch as it arrives; an epoch a resumed attempt trained again replaces the first attempt's record."""
    import trainer.curves
    from infra.curves import CurvePainter

    (tmp_path / "config.yaml").write_text("model: model3\ntrain:\n  target_accuracy: 0.995\n  epochs: 4\n")
    drawn: list[tuple] = []
    monkeypatch.setattr(trainer.curves, "write_curves", lambda h, path, target, claim, test_size: drawn.append(
        ([r["test_accuracy"] for r in h], path.name, target, claim, test_size)) or path.write_bytes(PNG))
    events = tmp_path / "events.jsonl"

    def emit(*evs: dict) -> None:
        with open(events, "a") as f:
            f.writelines(json.dumps(e) + "\n" for e in evs)

    painter = CurvePainter(tmp_path, every=3600)
    assert not painter.poll(final=True)  # no epoch yet: nothing to draw
    emit({"type": "start", "test_size": 500}, *({"type": "epoch", **r, "best": True} for r in history()[:3]))
    assert not painter.poll()  # due only after `every` seconds
    emit({"type": "run_end"}, {"type": "start", "test_size": 500},  # a resumed attempt: epoch 3 again, then 4
         {"type": "epoch", **history()[3], "epoch": 3}, {"type": "epoch", **history()[3]})
    assert painter.poll()  # epoch 4 is the last planned: drawn as it arrives
    from core.config import MODEL_CLAIMS

    assert drawn == [([ACCS[0], ACCS[1], ACCS[3], ACCS[3]], "curves.png", 0.995, MODEL_CLAIMS["model3"], 500)]
    assert not painter.poll(final=True)  # nothing new: not drawn again
    bare = tmp_path / "no-config"  # an unreadable config never stops the agent: the curves, without its lines
    bare.mkdir()
    (bare / "events.jsonl").write_text(json.dumps({"type": "epoch", **history()[0]}) + "\n")
    assert CurvePainter(bare, every=3600).poll(final=True)
    assert drawn[-1][1:] == ("curves.png", None, None, 10_000)
