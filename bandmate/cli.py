"""The ``bandmate`` command: one entry point, one subcommand per stage.

Subcommand modules are imported only when chosen, so ``bandmate --help`` and the desktop app
never pay for torch or transformers. Each module offers ``configure(parser)`` and
``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys

from bandmate import __version__

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("bandmate.training.prepare_cli", "turn MIDI folders into mmmtrack token shards"),
    "train": ("bandmate.training.train_cli", "train a GPT-2 music model on prepared shards"),
    "export": ("bandmate.training.export_cli", "export a trained run to an ONNX model folder"),
    "convert": (
        "bandmate.training.convert_cli",
        "turn a Megatron-LM GPT checkpoint into a Hugging Face model folder",
    ),
    "generate": ("bandmate.models.generate_cli", "continue a MIDI file or add a track to it"),
    "jam": ("bandmate.bridge.jam", "headless bandmate: MIDI in, generated MIDI out"),
    "ports": ("bandmate.bridge.ports_cli", "list the MIDI ports bandmate can see"),
    "models": ("bandmate.models.registry", "list the shipped models (--model NAME)"),
    "app": ("bandmate.ui.app", "open the desktop app (the default)"),
}

#: Modules only the training extra installs: a command that needs one says how to get it.
TRAIN_EXTRA = ("torch", "transformers", "safetensors", "onnx", "onnxscript", "tensorboard")

EPILOG = """examples:
  bandmate generate prompt.mid -o out.mid --continue 4     (uses the shipped chorale model)
  bandmate generate song.mid -o out.mid --add-track drums --model band
  bandmate prepare ../shared/data/jsfakes -o data/ --voices SOPRANO,ALTO,TENOR,BASS
  bandmate train data/ -o runs/tiny --preset tiny
  bandmate export runs/tiny -o models/tiny --int8
  bandmate jam --api jack                                  (no window)

run 'bandmate COMMAND --help' for the options of one command."""


def _epilog() -> str:
    """The examples and the shipped models (read from the installation: names only, no ONNX)."""
    from bandmate.models.registry import help_lines

    return f"{EPILOG}\n\nshipped models (--model NAME; 'bandmate models' for details):\n" + (
        "\n".join(help_lines())
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only when there is one worth reading (not None, not already said)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if d is None or d is False or d == "" or d == argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action) or text


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bandmate",
        description="An AI bandmate for your DAW: continue your bars or add a part, over MIDI.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"bandmate {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    p.add_argument(
        "command",
        nargs="?",
        default="app",
        choices=list(COMMANDS),
        metavar="COMMAND",
        help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items()),
    )
    return p


_NEGATIVE_RANGE = re.compile(r"^-\d+(:-?\d+)?$")


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--transpose -5:6`` -> ``--transpose=-5:6``: argparse takes ``-5:6`` for a flag."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if (
            tok.startswith("--")
            and "=" not in tok
            and i + 1 < len(argv)
            and _NEGATIVE_RANGE.match(argv[i + 1])
        ):
            out.append(f"{tok}={argv[i + 1]}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    # Split "bandmate [-v] COMMAND [args...]" without importing every command module.
    head: list[str] = []
    while argv and argv[0].startswith("-") and argv[0] not in ("--",):
        head.append(argv.pop(0))
        if head[-1] in ("-h", "--help", "--version"):
            top.parse_args(head)
            return 0
    cmd_name = argv.pop(0) if argv else "app"
    ns = top.parse_args([*head, cmd_name])
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    module_name, help_text = COMMANDS[ns.command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        return _missing_extra(ns.command, e)
    parser = argparse.ArgumentParser(
        prog=f"bandmate {ns.command}",
        description=(module.__doc__ or help_text).strip().splitlines()[0],
        formatter_class=_HelpFormatter,
    )
    module.configure(parser)
    args = parser.parse_args(_join_negative_values(argv))
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        return _missing_extra(ns.command, e)


def _missing_extra(command: str, e: ModuleNotFoundError) -> int:
    """One line instead of a traceback when a command needs the training extra."""
    root = (e.name or "").split(".")[0]
    if root not in TRAIN_EXTRA:
        raise e
    print(
        f"bandmate {command} needs the training extra ({root} is not installed): "
        'pip install "bandmate[train]"',
        file=sys.stderr,
    )
    return 2
