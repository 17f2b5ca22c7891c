"""``accelerate launch -m trainer --run-dir DIR [--resume]``: train one run in DIR."""

from __future__ import annotations

import time

STARTED_AT = time.time()  # before the imports: the start event says what they cost

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from core.errors import LaunchError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    parser.add_argument("--run-dir", required=True, type=Path, help="folder holding config.yaml; artifacts go here")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    args = parser.parse_args(argv)
    from trainer.train import PREEMPTED_EXIT, Preempted, train

    try:
        train(args.run_dir, resume=args.resume, started_at=STARTED_AT)
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


def exit_now(code: int) -> None:
    """A finished run ends without the interpreter's teardown: with torch loaded, freeing its thousands of modules
    and objects took 1.2 s (2.5 s with torch._dynamo) after the run was over, on the 2-core dev machine, and the
    agent's ``run_end`` waits for the exit. Everything the run wrote is closed by then (the trackers by
    ``end_training``, checkpoints and JSON files as they were written, events line by line); what is still
    buffered, stdout, stderr and logging's handlers, is flushed here. Any other end (a failure, a stop on
    request) exits the ordinary way: whatever it left open is flushed by the teardown, as before."""
    if code != 0:
        sys.exit(code)
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    exit_now(main())
