"""The tests' own package: what the test modules, their conftest and bench/ share.

No test module imports another; what two of them need lives here (fixtures stay in tests/conftest.py).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout
