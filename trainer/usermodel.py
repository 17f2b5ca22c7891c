"""A model class from a file of the project: ``model: models/tiny.py:TinyNet`` in a config.

The path is relative to the project root (the folder holding trainer/; on an instance, the copy `train`
synced there). The file is imported as a module of its own, and the class is built and checked: a
``torch.nn.Module`` with parameters whose output for a batch of 1x28x28 images is 10 logits per image.
Every failure is one ConfigError line naming the file (and line where there is one), with the frames of
the user's own file — never ours — as its ``detail``.

    model = build("models/tiny.py:TinyNet"); check_budget("models/tiny.py:TinyNet", count_params(model), 20_000)
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from core.config import model_file
from core.errors import ConfigError
from trainer.models import build_model, count_params

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROBE = (2, 1, 28, 28)  # the batch a file's model is tried on: two 1x28x28 images


def build(model: str, root: Optional[Path] = None) -> nn.Module:
    """The config's ``model:``: a zoo name, or ``PATH.py:ClassName`` read below ``root`` (default PROJECT_ROOT)."""
    spec = model_file(model)
    return build_model(model) if spec is None else build_from_file(*spec, root=root)


def check_budget(model: str, params: int, max_params: Optional[int]) -> None:
    """``train.max_params``: a model with more trainable parameters is refused, with its count."""
    if max_params is not None and params > max_params:
        raise ConfigError(f"model {model} has {params:,} parameters, over train.max_params {max_params:,} — "
                          "make the model smaller or raise train.max_params")


def model_params(model: str, max_params: Optional[int], root: Optional[Path] = None) -> int:
    """Build ``model`` on this machine and count its parameters, refusing one over ``max_params``."""
    params = count_params(build(model, root))
    check_budget(model, params, max_params)
    return params


def build_from_file(path: str, name: str, root: Optional[Path] = None) -> nn.Module:
    file = _locate(path, root or PROJECT_ROOT)
    module = _import(file, path)
    cls = _find_class(module, file, path, name)
    try:
        model = cls()
    except Exception as exc:
        raise _user_error(exc, file, path, f"in {name}()", _line_of(cls, file)) from None
    if count_params(model) == 0:
        raise ConfigError(f"{path}{_at(_line_of(cls, file))}: {name} has no trainable parameters — give it layers "
                          "with weights (nn.Conv2d, nn.Linear, ...) created in __init__")
    _check_output(model, file, path, name)
    return model


def _locate(path: str, root: Path) -> Path:
    base = root.resolve()
    file = (base / path).resolve()
    if not file.is_relative_to(base):  # a symlink leading out of the project
        raise ConfigError(f"model: {path} leads outside the project folder {base} (a symlink?) — "
                          "keep the model's file inside the project")
    if not file.is_file():
        raise ConfigError(f"model: {path} not found in the project folder {base} — the path is relative to the "
                          "project root (the folder holding configs/ and trainer/)")
    return file


def _import(file: Path, shown: str) -> Any:
    name = "mnist_launch_user_model_" + re.sub(r"\W", "_", shown)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None  # a .py file always has a spec and a loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and inspect look a class's module up here
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        doing = "reading it" if isinstance(exc, SyntaxError) else "importing it"
        raise _user_error(exc, file, shown, f"while {doing}") from None
    return module


def _find_class(module: Any, file: Path, shown: str, name: str) -> type[nn.Module]:
    obj = getattr(module, name, None)
    if obj is None:
        mine = sorted(n for n, v in vars(module).items()
                      if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == module.__name__)
        has = f"its nn.Module classes: {', '.join(mine)}" if mine else "it defines no nn.Module class"
        raise ConfigError(f"{shown}: no class '{name}' there ({has}) — write model: {shown}:ClassName")
    if not isinstance(obj, type):
        kind = type(obj).__name__
        raise ConfigError(f"{shown}{_at(_line_of(obj, file))}: '{name}' is not a class (its type: {kind}) — "
                          f"name an nn.Module class: model: {shown}:ClassName")
    if not issubclass(obj, nn.Module):
        raise ConfigError(f"{shown}{_at(_line_of(obj, file))}: class {name} is not a torch.nn.Module — "
                          f"derive it from one: class {name}(nn.Module)")
    return obj


def _check_output(model: nn.Module, file: Path, shown: str, name: str) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(PROBE))
    except Exception as exc:
        raise _user_error(exc, file, shown, f"in {name}'s forward on a {PROBE} batch",
                          _line_of(type(model).forward, file)) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (PROBE[0], 10):
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        line = _line_of(type(model).forward, file)
        raise ConfigError(f"{shown}{_at(line)}: {name} returns {got} for a {PROBE} batch of 1x28x28 images — "
                          f"it must return ({PROBE[0]}, 10): 10 logits per image")


def _user_error(exc: BaseException, file: Path, shown: str, doing: str, line: Optional[int] = None) -> ConfigError:
    """One line naming the file and the line where it failed; the frames of that file only as the detail."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(file)]
    detail = "".join(traceback.format_list(frames))
    if isinstance(exc, SyntaxError) and exc.filename == str(file):  # the line, with a caret under the fault
        line, text = exc.lineno, exc.msg
        detail = "".join(traceback.format_exception_only(type(exc), exc)[:-1])
    else:
        line = frames[-1].lineno if frames else line
        text = (str(exc).strip().splitlines() or [""])[0][:300]
    err = ConfigError(f"{shown}{_at(line)}: {type(exc).__name__}{': ' + text if text else ''} ({doing}) — "
                      f"fix {shown} and run again")
    err.detail = detail.replace(str(file), shown)
    return err


def _line_of(obj: Any, file: Path) -> Optional[int]:
    """Where ``obj`` is defined, if that is in the user's ``file`` (an inherited forward is torch's own)."""
    try:
        return inspect.getsourcelines(obj)[1] if inspect.getsourcefile(obj) == str(file) else None
    except (TypeError, OSError):
        return None


def _at(line: Optional[int]) -> str:
    return f":{line}" if line else ""
