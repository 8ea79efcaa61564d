"""The ``valley`` command line.

Every refusal of user input is one line, ``valley: error: <what was wrong and how to fix it>``,
with exit status 2; a search that was interrupted exits with status 130. Anything else is a
bug in valley: its traceback is printed under a line that says so, with exit status 1.
"""
from __future__ import annotations

import argparse
import difflib
import gc
import os
import signal
import sys
import traceback
from typing import Any

from search import commands as run_command
from search.cli_options import EXIT_BUG, EXIT_INTERRUPTED, EXIT_USAGE, add_search_options, given
from search.options import search_signals, user_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="valley", description="Rough-then-fine hyperparameter search on Ray Tune")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_search_commands(subparsers)
    add_result_commands(subparsers)
    add_data_commands(subparsers)
    return parser


def add_search_commands(commands: argparse._SubParsersAction) -> None:
    """search, quickstart, resume, plan, transfer: the commands that train."""

    search = commands.add_parser("search", help="run one search space as a Ray Tune experiment")
    search.add_argument("space", help="a built-in space (see `valley spaces`) or a YAML file")
    add_search_options(search)
    search.set_defaults(run=run_command.cmd_search)

    quick = commands.add_parser("quickstart", help="the offline first run: the MLP valley on digits, "
                                                   "then clock encodings, then a report")
    quick.add_argument("--storage", default="results")
    quick.add_argument("--clock-epochs", type=int, default=5, help="epochs per clock trial (default 5)")
    quick.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    quick.set_defaults(run=run_command.cmd_quickstart)

    resume = commands.add_parser("resume", help="continue an interrupted experiment or plan")
    resume.add_argument("experiment", help="the experiment or plan folder, e.g. results/mlp-rough-digits-...")
    resume.add_argument("--retry-failed", action="store_true",
                        help="also re-run failed trials from their last checkpoint (kept as they are by default)")
    resume.add_argument("--keep-weights", metavar="N|all",
                        help="replace the search's --keep-weights; on a completed search, delete at once the weights "
                             "of all but its best N finished trials")
    resume.set_defaults(run=run_command.cmd_resume)

    plan = commands.add_parser("plan", help="run a staged plan (rough -> valley -> fine -> confirm), "
                                             "or continue one given its folder")
    plan.add_argument("plan", help="a built-in plan (see `valley spaces`), a plan YAML, or a plan folder")
    add_search_options(plan)
    plan.add_argument("--budget", help="the whole plan's budget, split over its stages by the plan's budget_split: "
                                       "trial-epochs (e.g. 600) or wall-clock time (e.g. 90m, 2h)")
    plan.add_argument("--stage", action="append", default=[], metavar="STAGE.KEY=VALUE",
                      help="change one setting of one stage (repeatable), e.g. --stage confirm.seeds=3 or "
                           "--stage rough.max_epochs=5: any key a plan file's stage takes, the value read as YAML")
    plan.set_defaults(run=run_command.cmd_plan)

    transfer = commands.add_parser("transfer", help="re-run the best configs of an experiment on another data set")
    transfer.add_argument("experiment", help="an experiment or plan folder")
    transfer.add_argument("--top", type=int, default=3, help="how many of the best configurations (default 3)")
    add_search_options(transfer)
    for action in transfer._actions:  # still read, to be refused in one line; listed, they invited use
        if set(action.option_strings) & set(run_command.TRANSFER_FIXED):
            action.help = argparse.SUPPRESS
        elif "--dataset" in action.option_strings:  # not a space's: it said "default: the space's"
            action.help = "the data set to re-run the configurations on (required); see `valley datasets`"
        elif "--max-epochs" in action.option_strings:
            action.help = "epochs per trial (default: as many as the source's trials had)"
        elif "--name" in action.option_strings:  # it said SPACE-DATASET-TIME, a search's
            action.help = "the experiment's folder name (default: SOURCE-to-DATASET)"
    transfer.set_defaults(run=run_command.cmd_transfer)



def add_result_commands(commands: argparse._SubParsersAction) -> None:
    """report, dashboard: the commands that read results."""
    report = commands.add_parser("report", help="write one self-contained HTML report of an experiment or plan")
    report.add_argument("experiment", help="an experiment or plan folder")
    report.add_argument("--out", help="the HTML file (default: EXPERIMENT/report.html)")
    report.add_argument("--no-images", action="store_true", help="skip PNG/SVG export of each figure")
    report.set_defaults(run=run_command.cmd_report)

    dashboard = commands.add_parser("dashboard", help="serve a local page of every experiment and plan")
    dashboard.add_argument("--storage", "--results", dest="results", default="results",
                           help="the results folder, as the searches' --storage (default results/)")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1 only)")
    dashboard.add_argument("--port", type=int, default=8050)
    dashboard.set_defaults(run=run_command.cmd_dashboard)



def add_data_commands(commands: argparse._SubParsersAction) -> None:
    """data, spaces, datasets: what there is to search on and with."""
    data = commands.add_parser("data", help="make data sets")
    kinds = data.add_subparsers(dest="kind", required=True)
    clocks = kinds.add_parser("clocks", help="synthetic analog clocks in the course format "
                                             "(images.npy uint8 N x S x S, labels.npy int64 N x 2)")
    clocks.add_argument("--out", required=True, help="folder to write images.npy and labels.npy into")
    clocks.add_argument("--per-minute", type=int, default=25, help="images per minute of the dial (25)")
    clocks.add_argument("--size", type=int, default=150, help="pixels, square (150)")
    clocks.add_argument("--seed", type=int, default=0)
    clocks.add_argument("--preset", default="default", help="easy, default or hard")
    clocks.add_argument("--sheet", action="store_true", help="also write contact_sheet.png")
    clocks.add_argument("--overwrite", action="store_true",
                        help="replace images.npy and labels.npy if --out holds them (refused otherwise)")
    clocks.set_defaults(run=run_command.cmd_data_clocks)

    spaces = commands.add_parser("spaces", help="list the built-in search spaces and plans")
    spaces.set_defaults(run=run_command.cmd_spaces)

    datasets = commands.add_parser("datasets", help="list data sets and whether each is available offline")
    datasets.add_argument("--data-dir")
    datasets.set_defaults(run=run_command.cmd_datasets)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """argparse's parse, but an option the command does not know is refused by that command (its
    usage, not valley's) with the nearest option it has: ``--searcher`` -> "did you mean --search?"."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    command = chosen_command(parser, args)
    if unknown:
        options = [o[2:] for action in command._actions for o in action.option_strings if o.startswith("--")]
        hints = [f"{name}: did you mean --{close[0]}?" for name in (u.split("=")[0] for u in unknown)
                 if name.startswith("--") and (close := difflib.get_close_matches(name[2:], options, n=1))]
        command.error(f"unrecognized arguments: {' '.join(unknown)}" + (f" ({'; '.join(hints)})" if hints else ""))
    args.given = given(args, command)  # what a command that cannot honour an option refuses
    return args


def chosen_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost (sub)command parser that ``args`` went through, e.g. ``valley data clocks``'s."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return chosen_command(action.choices[getattr(args, action.dest)], args)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        with search_signals():  # SIGTERM as Ctrl-C, between a plan's stages too
            return args.run(args)
    except KeyboardInterrupt:
        print("valley: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - sorted into the user's mistakes and valley's bugs
        if isinstance(err, user_errors()):
            print(f"valley: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        traceback.print_exc()
        print(f"valley: internal error ({type(err).__name__}): this is a bug in valley, not a mistake in your "
              "input; please report it with the traceback above", file=sys.stderr)
        return EXIT_BUG


class Output:
    """``sys.stdout`` or ``sys.stderr`` of the ``valley`` command. When its reader goes away (``valley
    search ... | head``, a ``less`` that was quit), what follows goes to /dev/null, and the command
    ends as Ctrl-C would end it: a running search stops, keeps every finished trial, writes
    trials.csv and reads ``interrupted``; a plan starts no further stage; exit status 130. (It was
    a traceback calling itself a bug, and an experiment without its trials.csv.)"""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        from search.options import OUTPUT_GONE, SEARCHING

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())  # what is still buffered goes there too
        os.close(devnull)
        if OUTPUT_GONE.is_set():
            return
        OUTPUT_GONE.set()
        if SEARCHING.is_set():
            os.kill(os.getpid(), signal.SIGINT)  # Tune's own Ctrl-C: a graceful stop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def command() -> None:
    """The ``valley`` command: ``main``'s exit status, without the interpreter's last full garbage
    collection (over a second with torch, pandas and Ray loaded; the memory goes back to the system
    anyway). atexit handlers still run, and valley closes its files where it writes them."""
    sys.stdout, sys.stderr = Output(sys.stdout), Output(sys.stderr)
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    command()
