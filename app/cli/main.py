"""`sweepserve`: the command line. One `cmd_<name>(args, settings)` per subcommand, registered in
`SUBCOMMANDS`; to add one, write its `add_<name>` (arguments) and `cmd_<name>` (action).

Heavy imports (torch, through the app and the worker) happen inside the commands that need them,
so `sweepserve migrate` and `--help` stay instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from app.cli.args import gpu_list
from app.cli.client import CLIENT_COMMANDS
from app.cli.serve import add_serve, cmd_serve
from app.ops.logs import configure_logging
from app.settings import Settings

log = logging.getLogger("sweepserve.cli")

# --- subcommands -------------------------------------------------------------------------------


def add_worker(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpus", type=gpu_list, default=None, help="CUDA ids, e.g. 0,1; '' = the CPU; default all visible"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 0 if a worker on this host heartbeat lately, else 1"
    )
    parser.add_argument("--max-trials", type=int, default=None, help="exit after this many trials")


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Claim and train trials until SIGTERM/SIGINT (run_worker handles both)."""
    if args.check:  # the container healthcheck: no torch import, no training
        from app.ops.health import check_local_worker

        healthy, message = check_local_worker(settings)
        print(message)
        return 0 if healthy else 1
    from app.worker.loop import run_worker

    run_worker(settings, gpus=args.gpus, max_trials=args.max_trials)
    return 0


def add_migrate(_parser: argparse.ArgumentParser) -> None:
    """No options: the database is SWEEPSERVE_DATABASE_URL."""


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Bring the database schema to the newest revision."""
    from app.store.db import head_revision, upgrade_to_head

    upgrade_to_head(settings.database_url)
    log.info("database schema at revision %s", head_revision())
    return 0


Command = Callable[[argparse.Namespace, Settings], int]
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Command, str]] = {
    "serve": (add_serve, cmd_serve, "the API plus local workers"),
    "worker": (add_worker, cmd_worker, "one worker, no API"),
    "migrate": (add_migrate, cmd_migrate, "bring the database schema to head"),
    **CLIENT_COMMANDS,  # submit, status, predict, models: HTTP calls to a running server
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweepserve", description="Hyperparameter sweeps of ResNet-18 on CIFAR-10, served over HTTP."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, command, summary) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=command.__doc__)
        add_arguments(sub)
        sub.set_defaults(handler=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()  # SWEEPSERVE_* as they are now, not a cached copy from earlier in the process
    configure_logging(settings)
    return args.handler(args, settings)


if __name__ == "__main__":
    sys.exit(main())
