"""``python -m purilib`` (also the ``purilib`` command): one way in.

    purilib run TABLE [options]        regenerate a table: its notebook executed by papermill (purilib run --help)
    purilib list                       the tables and profiles
    purilib render TABLE --profile P   the table rendered from its records (nothing trained)
    purilib index [RESULTS_DIR]        rewrite results/README.md's index from the records
    purilib purify CHECKPOINT ...      purify your own model (python -m purilib purify --help)
    purilib campaign run|list|plan|unpack|estimates   the GPU campaign's queue (python -m purilib campaign --help)

argparse, as the rest of purilib: no dependency for a handful of subcommands.
"""
import sys

USAGE = __doc__.split("\n\n")[1]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = (argv[0], argv[1:]) if argv else ("--help", [])
    try:
        if command in ("run", "list", "index", "check"):
            from .cli import main as cli_main
            return cli_main([command, *rest])
        if command == "render":
            import argparse

            from .campaign import render_from_records
            parser = argparse.ArgumentParser(prog="purilib render")
            parser.add_argument("table")
            parser.add_argument("--profile", default="smoke")
            parser.add_argument("--results", default=None)
            args = parser.parse_args(rest)
            render_from_records(args.table, args.profile, args.results)
            return 0
        if command == "purify":
            from .purify_command import purify_command
            purify_command(rest)
            return 0
        if command == "campaign":
            from .campaign import _main
            return _main(rest)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if command in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    print(f"error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
