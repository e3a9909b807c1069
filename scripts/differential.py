"""Long differential runs: seeded random operations on an ossmount mount and on local disk.

Each seed runs in a fresh environment (a bundled server as a child process, a mount of it with
small parts, a state directory of its own), so that one divergence cannot spill into the next
seed. See tests/mount/differential.py for what is compared and what is left out by design.

    python scripts/differential.py --seeds 20 --ops 5000 --remount-every 500
    python scripts/differential.py --seeds 5 --ops 5000 --remount-every 500 --faults
    python scripts/differential.py --seeds 3 --ops 300 --self-check      # local vs local
    python scripts/differential.py --replay run/seed7.json --shrink      # replay, then shrink

A divergence prints the seed, the step and the ops so far (Python-like calls), and writes the
op list as JSON to OUT/seedN.json (``--replay`` runs it again); ``--shrink`` cuts it down to a
shortest op list that still diverges the same way, written to OUT/seedN.min.json. Exit status:
0 when no seed diverged, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import TEST_AK, TEST_BUCKET, TEST_SK
from tests.mount.conftest import (
    force_unmount,
    mount_command,
    ossmount_command,
    ossmount_env,
    wait_until_mounted,
)
from tests.mount.differential import (
    MOUNT_OPTIONS,
    DivergenceError,
    DriverOptions,
    Op,
    Side,
    ops_from_json,
    ops_to_json,
    run_trial,
    shrink,
)

FAULT_OPTIONS = ("--error-rate", "0.05", "--reset-rate", "0.01")
LOG_TAIL_LINES = 30


class Environment:
    """A bundled server and a foreground mount of its bucket, in ``workdir``."""

    def __init__(
        self, workdir: Path, *, faults: bool, fault_seed: int, extra_options: Sequence[str] = ()
    ) -> None:
        self.workdir = workdir
        self.extra_options = [option.replace("{workdir}", str(workdir)) for option in extra_options]
        self.mountpoint = workdir / "mnt"
        self.mountpoint.mkdir(parents=True)
        self.log_path = workdir / "mount.log"
        server_options = [*FAULT_OPTIONS, "--fault-seed", str(fault_seed)] if faults else []
        command = ossmount_command(
            "server", "--root", str(workdir / "server"), "--port", "0",
            "--access-key-id", TEST_AK, "--access-key-secret", TEST_SK,
            "--bucket", TEST_BUCKET, *server_options,
        )  # fmt: skip
        self.server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.server.stdout is not None
        self.endpoint = self.server.stdout.readline().strip()
        if not self.endpoint.startswith("http://"):
            self.server.kill()
            raise RuntimeError(f"the server did not start: {self.endpoint!r}")
        self.mount_process: subprocess.Popen[bytes] | None = None
        self.mount()

    def mount(self) -> None:
        command = mount_command(
            self.endpoint, TEST_BUCKET, self.mountpoint, "--log-file", str(self.log_path), "-f"
        )
        for option in (*MOUNT_OPTIONS, f"state_dir={self.workdir / 'state'}", *self.extra_options):
            command += ["-o", option]
        with (self.workdir / "mount.stderr").open("ab") as stderr:
            self.mount_process = subprocess.Popen(
                command, env=ossmount_env(), stdout=subprocess.DEVNULL, stderr=stderr
            )
        wait_until_mounted(self.mountpoint, self.mount_process, self.log_path)

    def unmount(self, *, kill: bool = False) -> None:
        force_unmount(self.mountpoint)
        process = self.mount_process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.mount_process = None

    def remount(self) -> None:
        self.unmount()
        self.mount()

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join("    | " + line for line in lines[-LOG_TAIL_LINES:])

    def close(self) -> None:
        self.unmount()
        self.server.terminate()
        try:
            self.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()

    def side(self) -> Side:
        return Side(
            "mount",
            lambda: self.mountpoint,
            remount=self.remount,
            abort=lambda: self.unmount(kill=True),
            log_tail=self.log_tail,
        )


@contextlib.contextmanager
def sides(args: argparse.Namespace, name: str, fault_seed: int) -> Iterator[tuple[Side, Side]]:
    """(mount side, local side) in fresh directories under args.workdir; for --self-check both
    are local directories."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=args.workdir))
    local_base = workdir / "local"
    local_base.mkdir()
    local = Side("local", lambda: local_base)
    try:
        if args.self_check:
            other = workdir / "other"
            other.mkdir()
            yield Side("other", lambda: other), local
            return
        environment = Environment(
            workdir, faults=args.faults, fault_seed=fault_seed, extra_options=args.mount_option
        )
        try:
            yield environment.side(), local
        finally:
            environment.close()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def replay(
    args: argparse.Namespace, ops: list[Op], seed: int, label: str
) -> DivergenceError | None:
    with sides(args, label, seed) as (mount, local):
        try:
            run_trial(mount, local, "t", seed=seed, ops=ops, options=driver_options(args))
        except DivergenceError as divergence:
            return divergence
    return None


def driver_options(args: argparse.Namespace) -> DriverOptions:
    return DriverOptions(
        flush_eio_documented=args.faults,
        probe_streamed_gaps=args.probe_streamed_gaps,
        avoid_renaming_open=args.avoid_renaming_open,
        walk_every=args.walk_every,
    )


class Replayer:
    """Replays op lists for the shrinker in one environment, each in a fresh trial directory
    (a new server and mount per replay would cost seconds each); the environment is started
    afresh after every replay that diverged, since a divergence may leave uploads retrying."""

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        self.args = args
        self.seed = seed
        self.replays = 0
        self._stack: contextlib.ExitStack | None = None
        self._sides: tuple[Side, Side] | None = None

    def __call__(self, ops: list[Op]) -> DivergenceError | None:
        self.replays += 1
        if self._sides is None:
            self._stack = contextlib.ExitStack()
            self._sides = self._stack.enter_context(sides(self.args, "shrink", self.seed))
        mount, local = self._sides
        try:
            run_trial(
                mount,
                local,
                f"r{self.replays}",
                seed=self.seed,
                ops=ops,
                options=driver_options(self.args),
            )
        except DivergenceError as divergence:
            self.close()
            return divergence
        return None

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack = None
        self._sides = None


def report(args: argparse.Namespace, divergence: DivergenceError, seed: int, name: str) -> None:
    print(divergence.report(), flush=True)
    path = args.out / f"{name}.json"
    path.write_text(ops_to_json(divergence.ops, seed=seed) + "\n")
    print(f"  op list written to {path}", flush=True)
    if not args.shrink:
        return
    if divergence.what == "mtime":
        # Needs seconds to pass between ops; a shorter replay runs faster and does not show it.
        print("  (an mtime difference depends on timing: not shrunk)", flush=True)
        return
    started = time.monotonic()
    replayer = Replayer(args, seed)
    try:
        shortest = shrink(
            divergence.ops, divergence.signature, replayer, deadline_s=args.shrink_deadline_s
        )
        replayer.close()
        # The shortest list once more, alone in a fresh environment.
        final = replay(args, shortest, seed, f"shrunk{seed}")
    finally:
        replayer.close()
    print(
        f"  shrunk {len(divergence.ops)} -> {len(shortest)} ops in {replayer.replays} replays, "
        f"{time.monotonic() - started:.0f} s:",
        flush=True,
    )
    for index, op in enumerate(shortest):
        print(f"    {index:4d}: {op}")
    if final is None:
        print("  (the shortest list does not diverge when replayed alone: timing-dependent?)")
    else:
        print(f"  -> {final.what}: {final.detail}")
    minimal = args.out / f"{name}.min.json"
    minimal.write_text(ops_to_json(shortest, seed=seed) + "\n")
    print(f"  shortest op list written to {minimal}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="how many seeds (default 5)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--ops", type=int, default=1000, help="ops per seed (default 1000)")
    parser.add_argument("--remount-every", type=int, default=500, help="0: never")
    parser.add_argument(
        "--faults", action="store_true", help="server with " + " ".join(FAULT_OPTIONS)
    )
    parser.add_argument("--self-check", action="store_true", help="both sides on local disk")
    parser.add_argument(
        "--probe-streamed-gaps",
        action="store_true",
        help="also read and truncate parts of streamed new files already uploaded",
    )
    parser.add_argument(
        "--avoid-renaming-open",
        action="store_true",
        help="no renames of (or over) open files or directories holding one",
    )
    parser.add_argument(
        "--walk-every",
        type=int,
        default=1,
        help="compare the whole tree every N steps (default 1; more lets stale caches show)",
    )
    parser.add_argument("--replay", type=Path, help="run the op list in this JSON file")
    parser.add_argument("--shrink", action="store_true", help="shrink each divergence")
    parser.add_argument("--shrink-deadline-s", type=float, default=900.0)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--out", type=Path, default=Path("differential-out"))
    parser.add_argument("--keep", action="store_true", help="keep work directories")
    parser.add_argument(
        "--mount-option",
        action="append",
        default=[],
        help="another -o option for the mount (repeatable; {workdir} is replaced by the run's "
        "work directory), e.g. 'use_cache={workdir}/cache'",
    )
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so that every mount made here is unmounted on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0 and not args.self_check and not os.path.exists("/dev/fuse"):
        print("/dev/fuse is missing", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.replay is not None:
        recorded = json.loads(args.replay.read_text())
        seed = int(recorded.get("seed", 0))
        divergence = replay(args, ops_from_json(args.replay.read_text()), seed, "replay")
        if divergence is None:
            print(f"replay of {args.replay}: no divergence")
            return 0
        report(args, divergence, seed, f"replay-{args.replay.stem}")
        return 1
    diverged = []
    started = time.monotonic()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        seed_started = time.monotonic()
        with sides(args, f"seed{seed}", seed) as (mount, local):
            try:
                driver = run_trial(
                    mount,
                    local,
                    "t",
                    seed=seed,
                    count=args.ops,
                    remount_every=args.remount_every,
                    options=driver_options(args),
                )
            except DivergenceError as divergence:
                caught: DivergenceError | None = divergence
            else:
                caught = None
        if caught is None:
            extra = f", {driver.documented_eios} documented EIOs" if args.faults else ""
            print(
                f"seed {seed}: {args.ops} ops, no divergence "
                f"({time.monotonic() - seed_started:.0f} s{extra})",
                flush=True,
            )
            continue
        diverged.append(seed)
        print(f"seed {seed}: diverged at step {caught.step}", flush=True)
        report(args, caught, seed, f"seed{seed}")
    print(
        f"{args.seeds - len(diverged)} of {args.seeds} seeds passed "
        f"({time.monotonic() - started:.0f} s); diverged: {diverged or 'none'}"
    )
    return 1 if diverged else 0


if __name__ == "__main__":
    sys.exit(main())
