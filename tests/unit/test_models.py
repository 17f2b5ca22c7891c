import pytest
import torch

from trainer.models import MODELS, build_model, count_params, summarize
from trainer.zoo import ZOO

# The table: exact counts where the seed lists layers, budgets where it shows only images.
EXACT = {"model4": 7194, "fc_baseline": 26698, "fc_dropout": 15106, "one_epoch": 8530, "gap_19k": 19114}
BUDGET = {"model1": 8716, "model2": 3964, "model3": 7926, "record": 3999}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_seed_models_have_the_seeds_exact_parameter_counts(name):
    assert count_params(build_model(name)) == EXACT[name]


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_designed_models_stay_within_budget(name):
    assert count_params(build_model(name)) <= BUDGET[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_maps_a_batch_to_ten_logits_and_names_its_seed(name):
    model = build_model(name).eval()
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    spec = MODELS[name]
    if spec.seed != "(ours)":
        assert spec.seed in type(model).__doc__
    assert count_params(model) == ZOO[name].params  # what `models` lists without building it
    assert type(model).__name__ == ZOO[name].cls


def test_summary_rows_add_up_to_the_parameter_count():
    model = build_model("gap_19k")
    rows = summarize(model)
    assert sum(r["params"] for r in rows) == 19114
    conv1 = rows[0]
    assert conv1["layer"] == "Conv2d-1" and conv1["output_shape"] == [-1, 8, 28, 28] and conv1["params"] == 80
    assert rows[-1]["output_shape"] == [-1, 10]


def test_model4_table_rows_match_the_seed():
    rows = [r for r in summarize(build_model("model4")) if r["params"]]
    assert [r["params"] for r in rows] == [54, 12, 648, 24, 2592, 48, 2592, 24, 1080, 20, 100]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_has_a_claimed_accuracy_that_its_claim_states(name):
    """core/config's numbers (drawn on curves.png, judged by bench/reproduce.py) are the ones the claims say."""
    import re

    from core.config import MODEL_CLAIMS

    stated = [float(n) for n in re.findall(r"(\d+(?:\.\d+)?)(?:-[\d.]+)?%", MODELS[name].claim)]
    assert 100 * MODEL_CLAIMS[name] == pytest.approx(stated[0])  # the first: the bar (a range's lower end)
