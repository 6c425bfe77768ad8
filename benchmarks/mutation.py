"""Mutation-testing report of the safety core: mutmut's verdicts per module, scored against the target.

mutmut (``[tool.mutmut]`` in pyproject.toml) copies the tree into ``mutants/``, mutates only the
safety core there (assignment and TUF checks, download, the update state machine and controller,
slots, rollout rules, report ingest, the optimizer's selection and gates) and, per mutant, runs the
fast tests that call the mutated function. A mutant is *killed* when a test fails, *timed out* when
the tests ran past mutmut's limit (counted as killed, as mutmut does), *survived* when every test
passed, *no tests* when no selected test reaches it.

``benchmarks/mutation.toml`` lists the modules, most important first, with the tests that cover
each, and the survivors judged *equivalent* (no test can tell them from the original), each with
why; those are left out of the score. Score = (killed + timed out) / (mutants - equivalent -
skipped). Target: at least ``target`` (0.90) per module.

With ``--run`` the script runs mutmut module by module (``mutmut run --max-children N 'MODULE.*'``,
one log per module under the output directory); without it, it reads what the last runs left in
``mutants/``. Prints the table and the survivors, writes ``bench-out/mutation.json``. Exit status:
0, or 1 with ``--check`` when a reported module is below the target or not fully checked or an
equivalence entry is stale, 2 on a bad data file or a failed mutmut run. It does not mutate
anything itself and never touches the source tree outside ``mutants/``.

    .venv/bin/python benchmarks/mutation.py [--run] [--module edge_agent/trust/assignment.py ...]
        [--max-children 1] [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
PLAN = Path(__file__).with_name("mutation.toml")
KILLED = ("killed", "caught by type check")
SURVIVING = ("survived", "no tests", "suspicious", "segfault")  # listed as survivors; segfault = killed by a signal


@dataclass(frozen=True)
class Module:
    path: str  # e.g. "edge_agent/trust/assignment.py"
    tests: tuple[str, ...]

    @property
    def dotted(self) -> str:
        return self.path.removesuffix(".py").replace("/", ".")


@dataclass(frozen=True)
class Equivalent:
    mutant: str
    diff: str  # the mutated line, as mutmut's diff shows it after "+" ("-<line>" for a deleted line)
    why: str


@dataclass(frozen=True)
class Plan:
    target: float
    modules: tuple[Module, ...]
    equivalents: tuple[Equivalent, ...]


@dataclass
class Row:
    module: str
    counts: Counter[str] = field(default_factory=Counter)
    equivalent: int = 0
    test_s: float = 0.0  # sum of the per-mutant test runs: a one-worker run's length, less the set-up
    run_s: float | None = None  # wall time of this invocation's mutmut run, when --run
    covering_tests: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def killed(self) -> int:
        return sum(self.counts[s] for s in KILLED)

    @property
    def survived(self) -> int:
        return sum(self.counts[s] for s in SURVIVING) - self.equivalent

    @property
    def unchecked(self) -> int:
        return self.counts["not checked"] + self.counts["check was interrupted by user"]

    @property
    def score(self) -> float | None:
        scored = self.total - self.equivalent - self.counts["skipped"] - self.unchecked
        return (self.killed + self.counts["timeout"]) / scored if scored > 0 else None


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where} must be a non-empty list of strings, got {value!r}")
    return tuple(value)


def load_plan(path: Path) -> Plan:
    """Read ``mutation.toml``. Raises ValueError naming the field that is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    target = data.get("target")
    if not isinstance(target, float) or not 0.0 < target <= 1.0:
        raise ValueError(f"{path.name}: target must be a fraction in (0, 1], got {target!r}")
    modules = []
    for i, m in enumerate(data.get("module", [])):
        where = f"{path.name}: module[{i}]"
        p = m.get("path")
        if not isinstance(p, str) or not p.endswith(".py") or not (ROOT / p).is_file():
            raise ValueError(f"{where}.path must name a Python file of the tree, got {p!r}")
        modules.append(Module(p, _str_list(m.get("tests"), f"{where}.tests")))
    if not modules:
        raise ValueError(f"{path.name}: no [[module]] entries")
    equivalents = []
    for i, entry in enumerate(data.get("equivalent", [])):
        where = f"{path.name}: equivalent[{i}]"
        values = {k: entry.get(k) for k in ("mutant", "diff", "why")}
        for k, v in values.items():
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"{where}.{k} must be a non-empty string, got {v!r}")
        if "__mutmut_" not in values["mutant"]:
            raise ValueError(f"{where}.mutant must be a mutmut mutant name, got {values['mutant']!r}")
        equivalents.append(Equivalent(values["mutant"], values["diff"].strip(), values["why"].strip()))
    return Plan(float(target), tuple(modules), tuple(equivalents))


def check_config(plan: Plan, pyproject: Path) -> list[str]:
    """What in the plan pyproject's [tool.mutmut] does not cover: a module it never mutates, a test it never runs."""
    import fnmatch

    cfg = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}).get("mutmut", {})
    only = cfg.get("only_mutate", [])
    selection = [s.rstrip("/") for s in cfg.get("pytest_add_cli_args_test_selection", [])]
    problems = []
    for m in plan.modules:
        if only and not any(fnmatch.fnmatch(m.path, p) for p in only):
            problems.append(f"{m.path} is not in [tool.mutmut] only_mutate")
        for t in m.tests:
            if not any(t == s or t.startswith(s + "/") for s in selection):
                problems.append(f"{t} (for {m.path}) is not in [tool.mutmut] pytest_add_cli_args_test_selection")
    return problems


def run_module(module: Module, *, max_children: int, log_dir: Path) -> float:
    """``mutmut run`` on the mutants of one module; its output goes to a log. Returns the wall seconds."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{module.dotted}.log"
    cmd = [sys.executable, "-c", "from mutmut.__main__ import cli; cli()", "run"]
    cmd += ["--max-children", str(max_children), f"{module.dotted}.*"]
    t0 = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise RuntimeError(f"mutmut run for {module.path} exited {rc}; see {log}")
    return time.monotonic() - t0


def _meta(module: Module) -> dict[str, Any] | None:
    path = ROOT / "mutants" / (module.path + ".meta")
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _covering_tests(module: Module) -> int:
    path = ROOT / "mutants" / "mutmut-stats.json"
    if not path.is_file():
        return 0
    by_function = json.loads(path.read_text(encoding="utf-8")).get("tests_by_mangled_function_name", {})
    tests = {t for name, ts in by_function.items() if name.startswith(module.dotted + ".") for t in ts}
    return len(tests)


def _plus_lines(diff: str) -> list[str]:
    return [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]


def _changed_lines(diff: str) -> list[str]:
    """The lines a mutant adds; for one that only deletes a line, that line as ``-<line>``."""
    added = _plus_lines(diff)
    if added:
        return added
    return ["-" + line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]


def collect(
    plan: Plan, modules: Sequence[Module], run_s: dict[str, float]
) -> tuple[list[Row], list[dict[str, Any]], list[dict[str, str]]]:
    """Rows per module, the survivors (with their diffs) and the equivalence entries that no longer apply."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    by_name = {e.mutant: e for e in plan.equivalents}
    used: set[str] = set()
    stale: list[dict[str, str]] = []
    rows: list[Row] = []
    survivors: list[dict[str, Any]] = []
    for m in modules:
        meta = _meta(m)
        if meta is None:
            continue
        row = Row(m.path, run_s=run_s.get(m.path), covering_tests=_covering_tests(m))
        row.test_s = sum(meta.get("durations_by_key", {}).values())
        for name, code in tqdm(meta["exit_code_by_key"].items(), desc=m.path, leave=False, disable=None):
            status = status_by_exit_code[code]
            row.counts[status] += 1
            if status not in SURVIVING:
                continue
            diff = get_diff_for_mutant(name, path=m.path)
            eq = by_name.get(name)
            if eq is not None:
                used.add(name)
                if eq.diff in _changed_lines(diff):
                    row.equivalent += 1
                    continue
                stale.append({"mutant": name, "why": f"its diff no longer shows {eq.diff!r}"})
            survivors.append({"module": m.path, "mutant": name, "status": status, "diff": diff})
        rows.append(row)
    reported = {m.dotted for m in modules if _meta(m) is not None}
    for e in plan.equivalents:
        if e.mutant not in used and any(e.mutant.startswith(d + ".") for d in reported):
            stale.append({"mutant": e.mutant, "why": "no such surviving mutant"})
    return rows, survivors, stale


def table(rows: Sequence[Row], target: float) -> str:
    head = (
        f"{'module':34s} {'mutants':>7s} {'killed':>6s} {'survived':>8s} {'timeout':>7s} {'equiv':>5s} "
        f"{'unchecked':>9s} {'score':>6s} {'tests':>5s} {'test s':>7s} {'run s':>6s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        score = "-" if r.score is None else f"{r.score:6.1%}"
        mark = "" if r.score is None or (r.score >= target and not r.unchecked) else "  <"
        run = "-" if r.run_s is None else f"{r.run_s:6.0f}"
        lines.append(
            f"{r.module:34s} {r.total:7d} {r.killed:6d} {r.survived:8d} {r.counts['timeout']:7d} {r.equivalent:5d} "
            f"{r.unchecked:9d} {score:>6s} {r.covering_tests:5d} {r.test_s:7.0f} {run:>6s}{mark}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/mutation.py",
        description="Mutation-testing report of the safety core (mutmut): mutants per module, killed, survived, "
        "timed out, score against the target; lists the survivors. Reads mutants/ unless --run.",
    )
    p.add_argument("--run", action="store_true", help="run mutmut on each selected module first (long: see --module)")
    p.add_argument(
        "--module",
        action="append",
        default=None,
        metavar="PATH",
        help="a module of mutation.toml to report (and run), e.g. edge_agent/trust/assignment.py; repeatable; "
        "default: all of them, most important first",
    )
    p.add_argument("--max-children", type=int, default=1, help="mutmut workers (default 1: shared hosts)")
    p.add_argument("--plan", type=Path, default=PLAN, help="modules and equivalent mutants (default: %(default)s)")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a reported module is under the target or not fully checked, or an equivalence entry is stale",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench-out", help="output directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out, args.plan = args.out.resolve(), args.plan.resolve()
    os.chdir(ROOT)  # mutmut reads pyproject.toml and mutants/ from the working directory
    if args.max_children < 1:
        print(f"error: --max-children must be >= 1, got {args.max_children}", file=sys.stderr)
        return 2
    try:
        plan = load_plan(args.plan)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    known = {m.path: m for m in plan.modules}
    unknown = [p for p in args.module or [] if p not in known]
    if unknown:
        print(f"error: --module must be one of mutation.toml's modules {sorted(known)}, got {unknown}", file=sys.stderr)
        return 2
    modules = [known[p] for p in args.module] if args.module else list(plan.modules)
    problems = check_config(plan, ROOT / "pyproject.toml")
    if problems:
        print(
            "error: mutation.toml and pyproject's [tool.mutmut] disagree:\n  " + "\n  ".join(problems), file=sys.stderr
        )
        return 2
    run_s: dict[str, float] = {}
    if args.run:
        for m in tqdm(modules, desc="mutmut", unit="module", disable=None):
            try:
                run_s[m.path] = run_module(m, max_children=args.max_children, log_dir=args.out / "mutation-logs")
            except RuntimeError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
    elif not (ROOT / "mutants").is_dir():
        print("no mutation results (no mutants/ directory): run `make mutate`, or this script with --run")
        return 0
    rows, survivors, stale = collect(plan, modules, run_s)
    if not rows:
        print("no mutation results for the selected modules in mutants/: run this script with --run")
        return 0
    print(table(rows, plan.target))
    print(f"\ntarget: score >= {plan.target:.0%} per module; '<' marks a module under it or not fully checked")
    if survivors:
        print(f"\nsurvivors ({len(survivors)}): `mutmut show NAME` for the whole diff")
        for s in survivors:
            changed = "; ".join(_plus_lines(s["diff"])) or "(no diff)"
            print(f"  {s['status']:9s} {s['mutant']}\n            + {changed[:150]}")
    for s in stale:
        print(f"stale equivalence entry {s['mutant']}: {s['why']}")
    result = {
        "meta": {"target": plan.target, "plan": str(args.plan), "max_children": args.max_children, "ran": args.run},
        "rows": [
            {
                "module": r.module,
                "mutants": r.total,
                "killed": r.killed,
                "survived": r.survived,
                "timeout": r.counts["timeout"],
                "equivalent": r.equivalent,
                "unchecked": r.unchecked,
                "statuses": dict(r.counts),
                "score": r.score,
                "covering_tests": r.covering_tests,
                "test_s": round(r.test_s, 1),
                "run_s": None if r.run_s is None else round(r.run_s, 1),
            }
            for r in rows
        ],
        "survivors": survivors,
        "stale_equivalents": stale,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "mutation.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    below = [r.module for r in rows if r.score is None or r.score < plan.target or r.unchecked]
    return 1 if args.check and (below or stale) else 0


if __name__ == "__main__":
    sys.exit(main())
