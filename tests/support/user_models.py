"""Model files as a user writes them, for the tests of `model: PATH.py:ClassName` (trainer/usermodel.py).

    write(tmp_path, GOOD, "models/net.py"); build("models/net.py:Net", root=tmp_path)
"""

from __future__ import annotations

import textwrap
from pathlib import Path

HEAD = "import torch\nfrom torch import nn\n\n\n"  # lines 1-4 of every model file below

GOOD = HEAD + textwrap.dedent("""\
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(28 * 28, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))
""")


def write(root: Path, text: str, name: str = "m.py") -> str:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)
    return name


INIT_FAILS = HEAD + textwrap.dedent("""\
    def width():
        return int("eight")


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(784, width())

        def forward(self, x):
            return self.fc(x.flatten(1))
""")
