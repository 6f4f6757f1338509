"""The command line: `python -m chatbridge keys check`.

keys check checks every configured key now, as the periodic re-check does
(chatbridge/key_checks.py: a model list, which spends no generation quota), keeps the outcome
in the state store (so a key that passes comes back for a running server that shares it), and
prints a table: provider, the key's last four characters, ok or the failure class, and the
upstream's message. Exit status: 0 when every key passed, 1 when any failed or none is
configured, 2 for settings the service cannot start with or a wrong command.
"""

import argparse
import sys

from .config import load_config
from .errors import ConfigError

HEADER = ("provider", "key", "result", "message")


def keys_check() -> int:
    """Check every key and print the table; the exit status."""
    from .logs import setup_logging
    from .service import Service

    try:
        config = load_config()
    except ConfigError as error:
        print(f"ChatBridge cannot start: {error}", file=sys.stderr)
        return 2
    setup_logging(config.log_language)
    service = Service(config)
    outcomes = service.checker.check_all()
    if not outcomes:
        names = ", ".join(p.key_variable for p in service.providers.keyed())
        print(f"no keys configured ({names})", file=sys.stderr)
        return 1
    rows = [(name, key.label.removeprefix("…"), outcome["result"], " ".join(outcome["message"].split()))
            for name, key, outcome in outcomes]
    print_table([HEADER, *rows])
    failed = sum(outcome["result"] != "ok" for _, _, outcome in outcomes)
    print(f"\n{len(rows) - failed} of {len(rows)} keys ok" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


def print_table(rows: list) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[-1])


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatbridge",
                                     description="ChatBridge's operator commands")
    commands = parser.add_subparsers(dest="group", required=True)
    keys = commands.add_parser("keys", help="the upstream keys")
    keys_commands = keys.add_subparsers(dest="command", required=True)
    keys_commands.add_parser("check", help="check every configured key now (a model list, "
                                           "no generation quota spent); exit 1 if any fails")
    parser.parse_args(argv)
    return keys_check()


if __name__ == "__main__":
    sys.exit(main())
