"""Helpers shared by Reach's command-line entry points: flags from dataclasses, logging, signals."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import MISSING, fields
from typing import Any, Callable, Mapping

from tqdm import tqdm

__all__ = ["DeprecatedFlag", "add_dataclass_flags", "add_deprecated_flag", "collect_overrides", "configure_logging", "GracefulStop",
           "ProgressBar", "positive_int"]


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


class DeprecatedFlag(argparse.Action):
    """An old flag name that still works: it stores what its `replacement` would (`const` for a flag without a
    value) and prints one line on stderr naming the replacement. Hidden from --help unless given a help text."""

    def __init__(self, option_strings: list[str], dest: str, replacement: str = "", **kwargs: Any):
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_deprecated_flag(container: Any, old: str, replacement: str, dest: str, const: Any = None, **kwargs: Any) -> None:
    """Keep `old` working as a hidden alias of `replacement` (same `dest`): without `type` or `nargs` it is a switch
    storing `const`, else it takes a value as the replacement does."""
    if "type" not in kwargs and "nargs" not in kwargs:
        kwargs.update(nargs=0, const=const)
    container.add_argument(old, action=DeprecatedFlag, replacement=replacement, dest=dest, **kwargs)


def _none_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parser(text: str) -> Any:
        if text.lower() in ("none", "off"):
            return None
        return parse(text)

    parser.__name__ = parse.__name__
    return parser


def _clip_norm(text: str) -> float | str | None:
    if text.lower() in ("none", "off"):
        return None
    if text.lower() == "auto":
        return "auto"
    return float(text)


def _shown(value: Any) -> str:
    """A default as a user would type it."""
    if value is None or value == ():
        return "none"
    if isinstance(value, tuple):
        return " ".join(str(part) for part in value)
    return str(value)


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, title: str, skip: tuple[str, ...] = (),
                        defaults: dict[str, Any] | None = None, renamed: Mapping[str, str] | None = None) -> None:
    """One `--field-name` flag per dataclass field; defaults stay in the dataclass (SUPPRESS here).

    The help shows `defaults` (a preset's values) where given, else the field's own default; a help text that
    already says its default in words ("(default: all cores)") keeps only that, unless `defaults` changes it.
    `renamed` (old field name -> new, lm.config.RENAMED_SETTINGS): the old flags of a renamed boolean field keep
    working, hidden, each use printing a deprecation line.
    """
    group = parser.add_argument_group(title)
    defaults = defaults or {}
    renamed_to = {new: old for old, new in (renamed or {}).items()}
    for item in fields(cls):
        if item.name in skip:
            continue
        flag = "--" + item.name.replace("_", "-")
        text = item.metadata.get("help", "")
        if item.name in defaults:
            help_text = f"{text} (default: {_shown(defaults[item.name])})"
        elif "default" in text:
            help_text = text
        else:
            help_text = f"{text} (default: {_shown(item.default if item.default is not MISSING else None)})"
        annotation = str(item.type)
        kwargs: dict[str, Any] = {"dest": item.name, "default": argparse.SUPPRESS, "help": help_text}
        if item.name == "clip_norm":
            kwargs.update(type=_clip_norm, metavar="NORM|auto|none")
        elif annotation == "bool":
            kwargs.update(action=argparse.BooleanOptionalAction)
        elif annotation.startswith("tuple[int"):
            kwargs.update(nargs="+", type=int, metavar="N")
        elif annotation.startswith("tuple"):
            kwargs.update(nargs="+", metavar="DIR")
        elif annotation.startswith("int"):
            kwargs.update(type=_none_or(int) if "None" in annotation else int, metavar="N")
        elif annotation.startswith("float"):
            kwargs.update(type=_none_or(float) if "None" in annotation else float, metavar="X")
        else:
            kwargs.update(type=str, metavar="NAME")
        group.add_argument(flag, **kwargs)
        if item.name in renamed_to:
            if annotation != "bool":
                raise ValueError(f"renamed flags are kept for boolean fields only, not {item.name}")
            old = "--" + renamed_to[item.name].replace("_", "-")
            add_deprecated_flag(group, old, flag, item.name, const=True, default=argparse.SUPPRESS)
            add_deprecated_flag(group, "--no-" + old[2:], "--no-" + flag[2:], item.name, const=False, default=argparse.SUPPRESS)


def collect_overrides(namespace: argparse.Namespace, classes: tuple[type, ...]) -> dict[str, Any]:
    """The dataclass fields the user set on the command line."""
    names = {item.name for cls in classes for item in fields(cls)}
    return {key: (tuple(value) if isinstance(value, list) else value) for key, value in vars(namespace).items() if key in names}


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def configure_logging(quiet: bool = False) -> None:
    """INFO messages to stderr, printed above any progress bar."""
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    for noisy in ("datasets", "huggingface_hub", "fsspec", "filelock", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class GracefulStop:
    """First Ctrl-C (or SIGTERM) asks the loop to stop after the current step; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "GracefulStop":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("stopping after this step and saving a checkpoint (Ctrl-C again to abort without saving)", file=sys.stderr)

    def __call__(self) -> bool:
        return self.requested


class ProgressBar:
    """A tqdm bar over the fraction of the budget used, with the training figures beside it."""

    def __init__(self, enabled: bool = True):
        self._bar = tqdm(total=1000, disable=not enabled, bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}", file=sys.stderr)
        self._done = 0

    def __call__(self, fraction: float, figures: dict) -> None:
        target = min(1000, int(fraction * 1000))
        if target > self._done:
            self._bar.update(target - self._done)
            self._done = target
        rate = figures.get("tok/s")
        self._bar.set_postfix_str(
            f"step {figures['step']} loss {figures['loss']:.3f} {rate or 0:,.0f} tok/s clip {figures['clip']:.0%} lr {figures['lr']:.2e}",
            refresh=False,
        )

    def close(self) -> None:
        self._bar.close()
