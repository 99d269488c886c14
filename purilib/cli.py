"""Helpers for ./reproduce.sh: ``python -m purilib.cli list`` and
``python -m purilib.cli check TABLE PROFILE [DATA_ROOT]`` (prints 'table_id notebook'
per table to run, or one line saying what is wrong, exit status 2)."""
import sys

from . import settings
from .data import DataNotFoundError, _find_cifar10
from .profiles import PROFILES, get_profile
from .tables import TABLES, resolve_tables


def main(argv):
    if argv[:1] == ["list"]:
        print("tables:")
        for t in TABLES.values():
            print(f"  {t.id:<12} {t.paper}: {t.title}")
            print(f"  {'':<12} rows {', '.join(t.attacks)}; columns {', '.join(t.defenses)}")
        print("profiles:")
        for p in PROFILES.values():
            print(f"  {p.name:<7} {p.description}")
        return 0
    if argv[:1] == ["check"] and len(argv) in (3, 4):
        try:
            tables, profile = resolve_tables(argv[1]), get_profile(argv[2])
            for table in tables:
                if profile.name not in table.profiles:
                    raise ValueError(f"table {table.id} has no profile '{profile.name}'")
            if profile.training["dataset"] == "cifar10":
                _find_cifar10(settings.data_root(argv[3] if len(argv) == 4 else None), download=False)
        except (ValueError, DataNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        for table in tables:
            print(table.id, table.notebook)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
