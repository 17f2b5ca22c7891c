"""``accelerate launch -m trainer --run-dir DIR [--resume]``: train one run in DIR."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from core.errors import LaunchError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    parser.add_argument("--run-dir", required=True, type=Path, help="folder holding config.yaml; artifacts go here")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    args = parser.parse_args(argv)
    from trainer.train import PREEMPTED_EXIT, Preempted, train

    try:
        train(args.run_dir, resume=args.resume)
    except Preempted as err:  # SIGUSR1: checkpointed at a step boundary; the agent records why
        print(f"trainer: {err}", file=sys.stderr, flush=True)
        return PREEMPTED_EXIT
    except LaunchError as err:
        if err.detail:  # the frames of the user's own model file
            print(err.detail.rstrip("\n"), file=sys.stderr, flush=True)
        print(f"error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except Exception as err:  # the agent records the reason; the traceback goes to train.log
        traceback.print_exc()
        print(f"error: trainer crashed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
