"""What encryption costs fusesync: push and pull of the synthetic home, plain and with
`.ssh/` and one 64 MiB file encrypted, side by side on one local SeaweedFS.

Each round pushes the same tree to a fresh prefix and pulls it into an empty folder, once
plain and once encrypted (in turn, so both see the same machine); the best of the rounds
counts. Prints the seconds and the ratio encrypted / plain per column (target: at most
1.2x for push-all and pull-all), and writes cache/bench/encrypt-results.json.

    python -m bench.encrypt_bench [--quick] [--rounds N] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.tools import Command, Fusesync, Workspace, execute, settle
from bench.tree import (
    FULL,
    MIB,
    QUICK,
    TreeSpec,
    compare,
    make_tree,
    remove_trees,
    snapshot,
    wait_out_removals,
)
from tests.support.seaweed import SeaweedServer

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "cache" / "bench"
BUCKET = "bench"
PASSPHRASE = "benchmark passphrase, not a secret"
ENCRYPT = (".ssh/", "big/blob0.bin")  # the dotfiles and the one 64 MiB file
COLUMNS = ("push-all", "push no-op", "pull-all", "pull no-op")
TARGET = {"push-all": 1.2, "pull-all": 1.2}
VARIANTS = ("plain", "encrypted")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def add_dotfiles(home: Path) -> None:
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    for name, size in (("id_ed25519", 411), ("id_ed25519.pub", 100), ("id_rsa", 2602),
                       ("config", 300), ("known_hosts", 4000), ("authorized_keys", 1200)):
        (ssh / name).write_bytes(os.urandom(size))


@dataclass
class Runs:
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, column: str, seconds: float) -> None:
        self.seconds.setdefault(column, []).append(seconds)

    def best(self, column: str) -> float | None:
        runs = self.seconds.get(column)
        return min(runs) if runs else None


def timed(command: Command) -> float:
    settle()
    outcome = execute(command)
    if outcome.returncode != 0:
        raise RuntimeError(f"'{command.shell()}' exited {outcome.returncode}:\n{outcome.output}")
    return outcome.seconds


def one_round(server: SeaweedServer, src: Path, run_dir: Path, variant: str, round_no: int,
              runs: Runs) -> str | None:
    """Push `src` to a fresh target, pull it into an empty folder; None if the copy is right."""
    root = run_dir / f"{variant}-{round_no}"
    ws = Workspace(root=root, src=src, dest=root / "dest", bucket=BUCKET, server=server)
    ws.dest.mkdir(parents=True)
    tool = Fusesync(Path(sys.executable).parent / "fusesync", ws)
    tool.setup()
    for env in (tool.env_a, tool.env_b):
        env["FUSESYNC_PASSPHRASE"] = PASSPHRASE
        env["USER"] = f"{variant}{round_no}"  # a fresh prefix each round
        env["LOGNAME"] = env["USER"]
    if variant == "encrypted":
        for env in (tool.env_a, tool.env_b):
            config = Path(env["XDG_CONFIG_HOME"]) / "fusesync" / "config.toml"
            text = config.read_text()
            patterns = ", ".join(f'"{p}"' for p in ENCRYPT)
            config.write_text(text.replace("[targets.bench]", f"[targets.bench]\nencrypt = "
                                           f"[{patterns}]"))
    push, pull = tool.push(), tool.pull()
    for column, command in (("push-all", push), ("push no-op", push), ("pull-all", pull),
                            ("pull no-op", pull)):
        seconds = timed(command)
        runs.add(column, seconds)
        log(f"  {variant:<9} round {round_no} {column:<10} {seconds:7.2f} s")
    return compare(snapshot(src), snapshot(ws.dest))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.encrypt_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.files} small files instead of {FULL.files}")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="rounds of each variant; the best counts (3)")
    parser.add_argument("--keep", action="store_true", help="keep cache/bench/encrypt/")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    spec: TreeSpec = replace(base, big_files=1, big_size=64 * MIB)
    work = BENCH_DIR / "encrypt"
    remove_trees(work)
    wait_out_removals(log)
    src = work / "src"
    stats = make_tree(src, spec)
    add_dotfiles(src)
    results = {variant: Runs() for variant in VARIANTS}
    wrong: list[str] = []
    try:
        with SeaweedServer(work / "seaweed") as server:
            server.client().create_bucket(Bucket=BUCKET)
            for round_no in range(args.rounds):
                for variant in VARIANTS:
                    mismatch = one_round(server, src, work / "run", variant, round_no,
                                         results[variant])
                    if mismatch:  # each round's copy stays until the end (tree.py)
                        wrong.append(f"{variant} round {round_no}: {mismatch}")
    finally:
        if not args.keep:
            remove_trees(work)

    print(f"\n{spec.label} + .ssh/ (6 files); encrypted: {', '.join(ENCRYPT)}; best of "
          f"{args.rounds}; {os.cpu_count()} CPUs shared with the S3 server; "
          f"{stats.bytes / MIB:.0f} MiB")
    print(f"{'seconds':<12}" + "".join(f"{c:>12}" for c in COLUMNS))
    for variant in VARIANTS:
        cells = [results[variant].best(c) for c in COLUMNS]
        print(f"{variant:<12}" + "".join(f"{c:>12.2f}" if c else f"{'-':>12}" for c in cells))
    ratios: dict[str, float | None] = {}
    for column in COLUMNS:
        plain, enc = results["plain"].best(column), results["encrypted"].best(column)
        ratios[column] = enc / plain if plain and enc else None
    print(f"{'ratio':<12}" + "".join(f"{r:>11.2f}x" if r else f"{'-':>12}"
                                      for r in ratios.values()))
    met = all((ratios[c] or 99) <= limit for c, limit in TARGET.items())
    print(f"target: push-all and pull-all at most 1.2x: {'met' if met else 'MISSED'}")
    for line in wrong:
        print(f"pulled copy wrong: {line}")
    out = BENCH_DIR / "encrypt-results.json"
    out.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "spec": spec.label,
        "encrypted": ENCRYPT, "rounds": args.rounds,
        "seconds": {v: results[v].seconds for v in VARIANTS},
        "best": {v: {c: results[v].best(c) for c in COLUMNS} for v in VARIANTS},
        "ratio": ratios, "met": met, "wrong": wrong,
    }, indent=2) + "\n")
    print(f"results: {out.relative_to(ROOT)}")
    return 0 if met and not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
