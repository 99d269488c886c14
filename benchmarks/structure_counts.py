"""The orchestration's shape, counted from the source (issue: one way in).

    python benchmarks/structure_counts.py [--rev REV]

Prints, for the working tree (and, with --rev, for that commit beside it):
- the places that validate a table request (a refusal of seeds / workers / clean_per_class / rows / columns /
  executor): lines raising or printing one of those refusals, in purilib/ and reproduce.sh;
- the places that turn a profile's name into a Profile (calls of profiles.get_profile / for_dataset / resolve,
  or of the old cells.resolve_profile, outside profiles.py), each with the function it is in;
- the notebooks' code lines after the parameters cell (non-blank), and the README's size.
"""
import argparse
import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFUSALS = re.compile(r"must be a positive integer|needs a positive integer|has no \{kind\}|unknown executor|"
                      r"clean_per_class must be in")
RESOLVES = re.compile(r"(?<![\w.])(get_profile|for_dataset|resolve_profile|resolve)\(")  # not Path(...).resolve()


def files(rev):
    """(path, text) of purilib/*.py, reproduce.sh, notebooks/*.ipynb and README.md at ``rev`` (None: the tree)."""
    if rev is None:
        paths = [*ROOT.glob("purilib/**/*.py"), ROOT / "reproduce.sh", *ROOT.glob("notebooks/*.ipynb"), ROOT / "README.md"]
        return [(str(p.relative_to(ROOT)), p.read_text()) for p in paths if p.exists()]
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    wanted = [p for p in listed if (p.startswith("purilib/") and p.endswith(".py")) or p in ("reproduce.sh", "README.md")
              or (p.startswith("notebooks/") and p.endswith(".ipynb"))]
    return [(p, subprocess.run(["git", "show", f"{rev}:{p}"], cwd=ROOT, capture_output=True, text=True).stdout)
            for p in wanted]


def counts(rev=None):
    validate, resolve, notebook_lines, readme = [], [], 0, 0
    for path, text in files(rev):
        if path.endswith(".ipynb"):
            cells = [c for c in json.loads(text)["cells"] if c["cell_type"] == "code"]
            notebook_lines += sum(1 for c in cells if "parameters" not in c["metadata"].get("tags", [])
                                  for line in "".join(c["source"]).splitlines() if line.strip())
            continue
        if path == "README.md":
            readme = len(text.encode())
            continue
        function = "(module)"
        for number, line in enumerate(text.splitlines(), 1):
            found = re.match(r"\s*def (\w+)", line)
            if found:
                function = found.group(1)
            if REFUSALS.search(line) and not line.lstrip().startswith("#"):
                validate.append(f"{path}:{number} ({function})")
            if path.endswith(".py") and path != "purilib/profiles.py" and not line.lstrip().startswith(("#", '"', "def ")):
                resolve += [f"{path}:{number} ({function})"] * len(RESOLVES.findall(line))
    return {"validate": validate, "resolve": resolve, "notebook_lines": notebook_lines, "readme_bytes": readme}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default=None, help="also count this commit (e.g. the one before a refactor)")
    args = parser.parse_args()
    for label, result in ([(args.rev, counts(args.rev))] if args.rev else []) + [("working tree", counts())]:
        validate_modules = sorted({v.split(":")[0] for v in result["validate"]})
        print(f"== {label}")
        print(f"request refusals: {len(result['validate'])} lines in {len(validate_modules)} files "
              f"({', '.join(validate_modules)})")
        print(f"profile name -> Profile: {len(result['resolve'])} call sites")
        for site in result["resolve"]:
            print(f"   {site}")
        print(f"notebook code lines after the parameters cell: {result['notebook_lines']}; "
              f"README {result['readme_bytes'] / 1000:.1f} KB")


if __name__ == "__main__":
    main()
