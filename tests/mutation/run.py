"""Mutation testing, one module at a time: `python tests/mutation/run.py [module ...]`.

Why a runner around mutmut: mutmut 3 mutates everything listed in `[tool.mutmut]
only_mutate` at once and keeps its copy and its results in `mutants/` of the directory it
runs in. Several people (or helpers) measuring different modules in one working tree
would overwrite each other's `mutants/`, and one module's trampolines would slow every
other module's run. So each module gets its own scratch copy, `mutants/<module>/` (git
ignores `mutants/`), whose `pyproject.toml` lists only that module; mutmut there runs the
unit suite once to learn which tests reach which function, then each mutant against
only those tests. The score printed is killed / covered (mutants some unit test reaches),
the figure docs/testing.md tables.

Not part of the test run: pytest collects `test_*.py` only. Needs the `mutation` extra
(`pip install -e '.[mutation]'`). CPU-heavy: `--jobs` defaults to 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRATCH = ROOT / "mutants"
ONLY_MUTATE = re.compile(r"^only_mutate = \[\n(?:.*\n)*?\]\n", re.MULTILINE)
# mutmut's exit codes (mutmut.stats.status_by_exit_code), reduced to what the score needs.
KILLED = {1, 3, 36, 37, -24, 24, 152, 255}  # failed, errored, timed out, type-checked
SURVIVED = {0}
NOT_COVERED = {5, 33}  # no unit test reaches the mutated function


def mutmut_config() -> dict[str, list[str]]:
    config: dict[str, list[str]] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
        "mutmut"
    ]
    return config


def configured_modules() -> dict[str, str]:
    """Module stem -> its path (`aupus_ha/pipeline/buffer.py`): the stem names the
    module on the command line and its scratch copy, so stems must be unique."""
    paths = mutmut_config()["only_mutate"]
    modules = {Path(p).stem: p for p in paths}
    assert len(modules) == len(paths), f"only_mutate: two modules share a file name: {paths}"
    return modules


def prepare(module: str, path: str) -> Path:
    """A fresh scratch copy whose mutmut configuration names only `module`."""
    work = SCRATCH / module
    shutil.rmtree(work, ignore_errors=True)  # mutmut never refreshes a stale copy
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", "*.pyc")
    for name in ["aupus_ha", "tests", "pyproject.toml", *mutmut_config()["also_copy"]]:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=ignore)
        else:
            shutil.copy2(source, work / name)
    pyproject = work / "pyproject.toml"
    text, found = ONLY_MUTATE.subn(f'only_mutate = ["{path}"]\n', pyproject.read_text(), count=1)
    assert found, "pyproject.toml: [tool.mutmut] only_mutate = [ ... ] not found"
    pyproject.write_text(text)
    return work


def run_mutmut(work: Path, jobs: int) -> bool:
    """mutmut's own output goes to the terminal; False when it could not run (a unit
    test failing without any mutant, say: its output says which)."""
    mutmut = Path(sys.executable).parent / "mutmut"
    env = dict(os.environ, PYTEST_DEBUG_TEMPROOT=str(work))  # pytest's tmp dirs stay here
    command = [str(mutmut), "run", "--max-children", str(jobs)]
    return subprocess.run(command, cwd=work, env=env, check=False).returncode == 0


def score(work: Path, module: str, path: str) -> dict[str, object]:
    meta = json.loads((work / "mutants" / f"{path}.meta").read_text())
    codes: dict[str, int | None] = meta["exit_code_by_key"]
    counts = Counter(
        "killed"
        if code in KILLED
        else "survived"
        if code in SURVIVED
        else "not covered"
        if code in NOT_COVERED
        else "other"
        for code in codes.values()
    )
    covered = counts["killed"] + counts["survived"]
    return {
        "module": module,
        "mutants": len(codes),
        **counts,
        "score": round(100 * counts["killed"] / covered, 1) if covered else None,
        "survivors": sorted(k for k, c in codes.items() if c in SURVIVED),
        "other": sorted(k for k, c in codes.items() if c not in KILLED | SURVIVED | NOT_COVERED),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module stems (default: every configured)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel mutants (default 1)")
    args = parser.parse_args()
    known = configured_modules()
    modules = args.modules or list(known)
    unknown = sorted(set(modules) - set(known))
    if unknown:
        parser.error(f"not in [tool.mutmut] only_mutate: {', '.join(unknown)}")
    rows, failed = [], []
    for module in modules:
        work = prepare(module, known[module])
        if not run_mutmut(work, args.jobs):
            failed.append(module)
            continue
        row = score(work, module, known[module])
        (work / "score.json").write_text(json.dumps(row, indent=2))
        rows.append(row)
        for name in row["survivors"]:  # type: ignore[attr-defined]
            print(f"survived: {name}  (cd {work} && mutmut show {name})")
    print("\n| module | mutants | not covered | killed | survived | score (killed / covered) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['module']} | {row['mutants']} | {row.get('not covered', 0)} "
            f"| {row.get('killed', 0)} | {row.get('survived', 0)} | {row['score']} % |"
        )
    if failed:
        print(f"mutmut could not run for: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
