"""The model zoo's catalog without torch: names, seeds, claims, budgets and parameter counts.

`mnist-launch models` lists it in a fraction of a second (building every model to count its parameters
meant importing torch: ~4 s on the 2-core dev machine). trainer/models.py attaches each entry's class;
tests/unit/test_models.py checks every ``params`` against the built model's count.

    ZOO["model3"].params  # 7736
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ZooEntry:
    name: str  # the config's stem and the `model:` key
    cls: str  # its class in trainer/models.py
    seed: str  # seed recipe file (../shared/seeds/)
    claim: str  # the seed's stated result
    budget: int  # the most parameters the recipe allows
    params: int  # trainable parameters of the built model


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("model1", "SkeletonNet", "004_3bd9a3d41f1d9b8d.txt", "Part-1: best test 98.87%, 8,716 params", 8716,
                 6568),
        ZooEntry("model2", "LightGapNet", "004_3bd9a3d41f1d9b8d.txt", "Part-2: best test 98.69%, 3,964 params", 3964,
                 3704),
        ZooEntry("model3", "EC2Net", "004_3bd9a3d41f1d9b8d.txt",
                 "Part-3: >= 99.4% within 15 epochs (best 99.48%), 7,926 params", 7926, 7736),
        ZooEntry("model4", "Model4", "000_cedc7f1e9801118b.txt", "Model_4: best test 99.1-99.3% in <= 15 epochs", 7204,
                 7194),
        ZooEntry("fc_baseline", "FCBaseline", "001_0b3a81bf58e92569.txt", "Model_1: best 98.80% in 11-12 epochs",
                 26698, 26698),
        ZooEntry("fc_dropout", "FCDropout", "001_0b3a81bf58e92569.txt", "Model_2: best 98.80% in 11-12 epochs", 15106,
                 15106),
        ZooEntry("one_epoch", "OneEpochNet", "002_1cec889a9c8ecd1e.txt", ">= 95% test accuracy after 1 epoch", 25000,
                 8530),
        ZooEntry("gap_19k", "Gap19kNet", "003_716314f9133d09a3.txt", ">= 99.4% within 20 epochs (99.49% at 20)", 20000,
                 19114),
        ZooEntry("record", "RecordNet", "(ours)", "target: >= 99.4% final in 15 epochs with < 4,000 params", 3999,
                 3800),
    ]
}
