"""`make bench`: fusesync push/pull against aws cli, rclone, s5cmd and s3cmd.

One local SeaweedFS (data under cache/bench/, stopped at the end, also on failure or
Ctrl+C); per tool, a seeded synthetic home pushed to its own prefix of one bucket and
pulled back into an empty folder. Prints a table of wall-clock seconds, the ratio of
fusesync to the best peer per column with the targets, and writes cache/bench/results.json.

    python -m bench.sync_bench [--quick] [--repeat N] [--pull-rounds N]
                               [--tools fusesync,aws,...] [--keep]

pull-all, the column noisiest on a shared machine (one tool's pull of the same tree took
2.2 s in one run and 3.8 s in another), is also run again once every tool has pushed: in
rounds (`--pull-rounds`, the order reversed each round), each tool into a folder of its
own that nothing was removed from; the best counts, as for the no-op columns.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.tools import TOOLS, Command, Tool, Workspace, execute, settle
from bench.tree import (
    FULL,
    QUICK,
    Snapshot,
    TreeSpec,
    TreeStats,
    change_one,
    compare,
    make_tree,
    remove_trees,
    snapshot,
    wait_out_removals,
)
from tests.support.seaweed import SeaweedServer, weed_executable

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "cache" / "bench"
BUCKET = "bench"
PUSH_ALL, PUSH_NOOP, PUSH_ONE = "push-all", "push no-op", "push 1-change"
PULL_ALL, PULL_NOOP = "pull-all", "pull no-op"
# column -> target for fusesync's time divided by the best peer's
TARGETS = {PUSH_ALL: 1.0, PUSH_NOOP: 0.5, PUSH_ONE: 0.5, PULL_ALL: 1.0, PULL_NOOP: 0.5}
COLUMNS = tuple(TARGETS)
DEFAULT_ORDER = ("aws", "rclone", "s5cmd", "s3cmd", "fusesync")  # fusesync last: fullest server
_TAIL_LINES = 30


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Cell:
    runs: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def best(self) -> float | None:
        return min(self.runs) if self.runs and self.error is None else None


@dataclass
class ToolResult:
    name: str
    version: str
    commands: dict[str, str] = field(default_factory=dict)
    cells: dict[str, Cell] = field(default_factory=dict)
    correct: bool | None = None  # the pulled copy equals the source (None: not checked)
    expected: Snapshot | None = field(default=None, repr=False)  # the source, as pushed
    mismatch: str | None = None
    error: str | None = None


def timed(
    result: ToolResult,
    column: str,
    command: Command,
    runs: int,
    before: Callable[[int], object] | None = None,
) -> Cell:
    """Run `command` `runs` times (after `before(i)`, untimed); stop at the first failure."""
    cell = result.cells.setdefault(column, Cell())
    for i in range(runs):
        if before is not None:
            before(i)
        settle()
        try:
            outcome = execute(command)
        except subprocess.TimeoutExpired as exc:
            cell.error = f"timed out after {exc.timeout:.0f} s"
            break
        if outcome.returncode != 0:
            tail = "\n".join(outcome.output.strip().splitlines()[-_TAIL_LINES:])
            cell.error = f"exit status {outcome.returncode}:\n{tail}"
            break
        cell.runs.append(outcome.seconds)
        log(f"  {result.name:<9} {column:<14} {outcome.seconds:8.2f} s")
    if cell.error:
        log(f"  {result.name:<9} {column:<14} FAILED: $ {command.shell()}")
        log("    " + cell.error.replace("\n", "\n    "))
    return cell


def pull_again(tool_cls: type[Tool], exe: Path, run_dir: Path, server: SeaweedServer,
               result: ToolResult, round_no: int) -> None:
    """Another pull of everything the tool pushed, into a new folder and, for fusesync, a
    new cluster (state and all): a pull-all as the first one was."""
    if result.error or result.expected is None or result.cells[PULL_ALL].error:
        return
    pushed = run_dir / tool_cls.name
    root = pushed / f"round{round_no}"
    ws = Workspace(root=root, src=pushed / "src", dest=root / "dest", bucket=BUCKET,
                   server=server)
    ws.dest.mkdir(parents=True)
    tool = tool_cls(exe, ws)
    try:
        tool.setup()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log(f"  {tool_cls.name}: round {round_no} setup failed: {exc}")
        return
    if timed(result, PULL_ALL, tool.pull(), 1).error is None:  # its copy checked too
        mismatch = compare(result.expected, snapshot(ws.dest))
        if mismatch:
            result.correct, result.mismatch = False, f"round {round_no + 1}: {mismatch}"
            log(f"  {tool_cls.name}: round {round_no + 1}'s pulled copy differs: {mismatch}")


def bench_tool(
    tool_cls: type[Tool],
    exe: Path,
    run_dir: Path,
    server: SeaweedServer,
    spec: TreeSpec,
    repeat: int,
) -> ToolResult:
    result = ToolResult(tool_cls.name, tool_cls.version(exe))
    root = run_dir / tool_cls.name
    ws = Workspace(root=root, src=root / "src", dest=root / "dest", bucket=BUCKET, server=server)
    log(f"{tool_cls.name}: {result.version}")
    make_tree(ws.src, spec)
    ws.dest.mkdir()
    tool = tool_cls(exe, ws)
    try:
        tool.setup()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        result.error = f"setup failed: {exc}"
        log(f"  {tool_cls.name}: {result.error}")
        return result
    push, pull = tool.push(), tool.pull()
    result.commands = {"push": push.shell(), "pull": pull.shell()}
    if timed(result, PUSH_ALL, push, 1).error:
        return result
    timed(result, PUSH_NOOP, push, repeat)
    timed(result, PUSH_ONE, push, repeat, before=lambda i: change_one(ws.src, i))
    expected = result.expected = snapshot(ws.src)
    if timed(result, PULL_ALL, pull, 1).error is None:
        result.mismatch = compare(expected, snapshot(ws.dest))
        result.correct = result.mismatch is None
        if result.mismatch:
            log(f"  {tool_cls.name}: pulled copy differs from the source: {result.mismatch}")
    timed(result, PULL_NOOP, pull, repeat)
    return result


# -- the report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    column: str
    ratio: float | None
    best_peer: str | None
    target: float
    met: bool  # within target, and fusesync's pulled copy checked out


def verdicts(results: list[ToolResult]) -> list[Verdict] | None:
    """fusesync / best peer per column; None unless fusesync and a peer ran."""
    ours = next((r for r in results if r.name == "fusesync"), None)
    # A peer whose pulled copy was wrong is nobody's benchmark.
    peers = [r for r in results if r.name != "fusesync" and r.correct is not False]
    if ours is None or not peers:
        return None
    out = []
    for column, target in TARGETS.items():
        timed_peers = [(c.best, r.name) for r in peers if (c := r.cells.get(column)) and c.best]
        best = min(timed_peers, default=None)
        mine = ours.cells.get(column, Cell()).best
        ratio = mine / best[0] if best and mine is not None else None
        met = ratio is not None and ratio <= target and ours.correct is True
        out.append(Verdict(column, ratio, best[1] if best else None, target, met))
    return out


def _last_words(error: str) -> str:
    """'exit status N: <last line of output>' out of a cell's error."""
    lines = error.strip().splitlines()
    return lines[0] if len(lines) < 2 else f"{lines[0]} {lines[-1].strip()}"


def _verdict_word(v: Verdict) -> str:
    if v.ratio is None:
        return "n/a"
    if v.ratio <= v.target and not v.met:
        return "unverified"  # fast enough, but fusesync's pulled copy was wrong or unchecked
    return "met" if v.met else "MISSED"


def cell_text(result: ToolResult, column: str) -> str:
    cell = result.cells.get(column)
    if cell is None:
        return "-"
    if cell.best is None:
        return "FAIL"
    mark = " ✗" if column == PULL_ALL and result.correct is False else ""
    return f"{cell.best:.2f}{mark}"


def table(results: list[ToolResult], spec: TreeSpec, stats: TreeStats, repeat: int,
          pull_rounds: int = 1) -> str:
    head = ["seconds", *COLUMNS, "pulled copy"]
    rows = []
    for r in results:
        check = {True: "✓", False: "✗", None: "-"}[r.correct]
        rows.append([r.name, *(cell_text(r, c) for c in COLUMNS), check])
    found = verdicts(results)
    if found:
        rows.append(
            ["fusesync / best peer", *(f"{v.ratio:.2f}x" if v.ratio else "-" for v in found), ""]
        )
        rows.append(["best peer", *(v.best_peer or "-" for v in found), ""])
        rows.append(["target", *(f"≤{v.target:.1f}x {_verdict_word(v)}" for v in found), ""])
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    mib = stats.bytes / 2**20
    lines = [
        f"{spec.label}: {stats.files} files in {stats.dirs} dirs, {mib:.0f} MiB; "
        f"no-op and 1-change: best of {repeat}; push-all: once; pull-all: best of "
        f"{pull_rounds} rounds; {os.cpu_count()} CPUs shared with the S3 server",
        "",
        line(head),
        line(["-" * w for w in widths]),
    ]
    lines += [line(row) for row in rows]
    if pull_rounds > 1:
        lines += ["", f"{PULL_ALL} in every round (median):", *(
            f"  {r.name:<9} {' '.join(f'{s:.2f}' for s in cell.runs)} "
            f"({statistics.median(cell.runs):.2f})"
            for r in results if (cell := r.cells.get(PULL_ALL)) and cell.runs)]
    notes = [f"{r.name}: {r.error}" for r in results if r.error]
    notes += [f"{r.name}: pulled copy wrong: {r.mismatch}" for r in results if r.mismatch]
    notes += [
        f"{r.name}: {column} failed, {_last_words(cell.error)}"
        for r in results
        for column, cell in r.cells.items()
        if cell.error
    ]
    if any(r.correct is False for r in results if r.name != "fusesync"):
        notes.append("peers with a wrong pulled copy are left out of 'best peer'")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def write_json(
    path: Path,
    results: list[ToolResult],
    skipped: dict[str, str],
    spec: TreeSpec,
    stats: TreeStats,
    repeat: int,
    pull_rounds: int = 1,
) -> None:
    data: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "spec": asdict(spec),
        "tree": asdict(stats),
        "repeat": repeat,
        "pull_rounds": pull_rounds,
        "cpus": os.cpu_count(),
        "server": _weed_version(),
        "tools": {
            r.name: {
                "version": r.version,
                "commands": r.commands,
                "seconds": {c: cell.best for c, cell in r.cells.items()},
                "runs": {c: cell.runs for c, cell in r.cells.items()},
                "errors": {c: cell.error for c, cell in r.cells.items() if cell.error},
                "correct": r.correct,
                "mismatch": r.mismatch,
                "error": r.error,
            }
            for r in results
        },
        "skipped": skipped,
        "fusesync_vs_best_peer": [asdict(v) for v in verdicts(results) or []],
    }
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _weed_version() -> str:
    try:
        proc = subprocess.run(
            [str(weed_executable()), "version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return "unknown"
    return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else "unknown"


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sync_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"a smoke run: {QUICK.label} (default: {FULL.label})"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        metavar="N",
        help="runs of each no-op and 1-change column; the best counts (3)",
    )
    parser.add_argument(
        "--pull-rounds",
        type=int,
        default=3,
        metavar="N",
        help="pulls of everything per tool, in rounds once all have pushed; the best "
             "counts (3)",
    )
    parser.add_argument(
        "--tools",
        default=",".join(DEFAULT_ORDER),
        help="comma-separated, in this order (default: %(default)s)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the trees and the server's data under cache/bench/",
    )
    args = parser.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in args.tools if t not in TOOLS]
    if unknown:
        parser.error(f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(TOOLS)}")
    if args.repeat < 1 or args.pull_rounds < 1:
        parser.error("--repeat and --pull-rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    run_dir, data_dir = BENCH_DIR / "run", BENCH_DIR / "seaweed"
    remove_trees(run_dir, data_dir)
    run_dir.mkdir(parents=True)

    chosen: list[tuple[type[Tool], Path]] = []
    skipped: dict[str, str] = {}
    for name in args.tools:
        exe = TOOLS[name].locate()
        if exe is None:
            skipped[name] = f"'{TOOLS[name].program}' not found in {sys.prefix}/bin or on PATH"
            log(f"skipped {name}: {skipped[name]} (make bench installs it)")
        else:
            chosen.append((TOOLS[name], exe))
    if not chosen:
        log("nothing to run")
        return 1

    results: list[ToolResult] = []
    # Nothing is deleted until the end: ext4 creates files slowly for a minute or more
    # after many were deleted (it steps over recently freed inodes), so a tool that runs
    # after another's trees were removed paid for them: a pull of the tree took 3.2 s on a
    # quiet disk and 6 s, most of it in the kernel, right after one.
    # And nothing is made until a removal just before (this run's, the last run's) is old
    # enough not to cost the kernel (tree.py).
    wait_out_removals(log)
    stats = make_tree(run_dir / "probe", spec)  # the same tree every tool gets
    try:
        log(f"starting SeaweedFS in {data_dir}")
        with SeaweedServer(data_dir) as server:
            server.client().create_bucket(Bucket=BUCKET)
            for tool_cls, exe in chosen:
                results.append(bench_tool(tool_cls, exe, run_dir, server, spec, args.repeat))
            tools = list(zip(chosen, results, strict=True))
            for round_no in range(1, args.pull_rounds):
                log(f"pull-all, round {round_no + 1} of {args.pull_rounds}")
                order = tools[::-1] if round_no % 2 else tools
                for (tool_cls, exe), result in order:
                    pull_again(tool_cls, exe, run_dir, server, result, round_no)
    finally:
        if not args.keep:
            remove_trees(run_dir, data_dir)

    print()
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    for r in results:
        print(f"{r.name}: {r.version}")
    print()
    print(table(results, spec, stats, args.repeat, args.pull_rounds))
    out = BENCH_DIR / "results.json"
    write_json(out, results, skipped, spec, stats, args.repeat, args.pull_rounds)
    print(f"\nresults: {out.relative_to(ROOT)}")
    ok = all(
        r.error is None and r.correct and all(c.error is None for c in r.cells.values())
        for r in results
    )
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; the server is stopped")
        sys.exit(130)
