"""Run every fuzz harness in fuzz/ and print executions and crashes per harness.

One command::

    python fuzz/run_all.py                 # each harness 1,000,000 executions, 2 at a time
    python fuzz/run_all.py --seconds 120   # each harness for 120 s instead
    python fuzz/run_all.py --only fuzz_wrap,fuzz_tcp_framing --runs 200000

Drivers: ``atheris`` (coverage-guided libFuzzer, the default when ``pip install atheris``
has been done) runs each harness as ``python fuzz/fuzz_X.py -runs=N ...`` in its own
process, with a scratch corpus (written to) in front of the seed corpus fuzz/corpus/fuzz_X/
(only read). ``mutate`` is a seeded, dependency-free driver: it mutates the seed corpus
(bit flips, byte edits, inserts, deletions, duplicated ranges, splices) and calls the
harness's ``test_one_input`` directly; the CI smoke run (tests/test_fuzz_smoke.py) uses it.

A harness may keep a ``REACHED`` counter (stage -> inputs that got there); the mutation
driver reports it, so a run shows that inputs get past the cheap checks into the decoders.

A crash is any exception escaping ``test_one_input`` (each harness catches exactly the
errors its parser may raise) or, under atheris, an input running longer than ``--timeout``
seconds. Crash inputs are kept under ``--workdir`` (printed at the end). Exit status 1 if any
harness crashed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
DEFAULT_RUNS = 1_000_000
#: Longest input libFuzzer generates (the parsers' inputs are packets or small texts).
MAX_LEN = 4096
#: Shorter limits where a harness's real inputs are shorter (PUSH_REPLY fits a 2048-byte
#: TLS record; the framing harness reads at most 1 + 1024 bytes).
MAX_LEN_FOR = {"fuzz_push_reply": 2048, "fuzz_tcp_framing": 1025}
#: Most crash inputs the mutation driver keeps per harness.
MAX_KEPT_CRASHES = 5


@dataclass(slots=True)
class Result:
    """What one harness run did."""

    harness: str
    driver: str
    executions: int = 0
    crashes: int = 0
    seconds: float = 0.0
    detail: str = ""
    crash_inputs: list[bytes] = field(default_factory=list)
    #: the harness's REACHED counts for this run (mutation driver only)
    reached: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.executions / self.seconds if self.seconds > 0 else 0.0


def harness_names() -> list[str]:
    """Every fuzz/fuzz_*.py, sorted."""
    return sorted(p.stem for p in FUZZ_DIR.glob("fuzz_*.py"))


def load_harness(name: str) -> ModuleType:
    """Import fuzz/<name>.py (fuzz/ is a folder of scripts, not a package)."""
    path = FUZZ_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"trivpn_fuzz_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seeds_for(name: str, module: ModuleType | None = None) -> list[bytes]:
    """The seed corpus files of a harness plus the SEEDS it declares itself."""
    out: list[bytes] = []
    folder = CORPUS_DIR / name
    if folder.is_dir():
        out += [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]
    if module is not None:
        out += [bytes(s) for s in getattr(module, "SEEDS", ())]
    return out or [b""]


# ---------------------------------------------------------------------------------------
# the dependency-free mutation driver

_INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x00\x01", b"\x01\x00")


def mutate(data: bytes, rng: random.Random, seeds: Sequence[bytes], max_len: int = MAX_LEN) -> bytes:
    """One to four random edits of `data` (never longer than `max_len`)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(buf)
        if op == 0 and n:  # flip a bit
            i = rng.randrange(n * 8)
            buf[i >> 3] ^= 1 << (i & 7)
        elif op == 1 and n:  # set a byte
            buf[rng.randrange(n)] = rng.randrange(256)
        elif op == 2:  # insert random bytes
            i = rng.randint(0, n)
            buf[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and n:  # delete a range
            i = rng.randrange(n)
            del buf[i : i + rng.randint(1, max(1, n // 4))]
        elif op == 4 and n:  # duplicate a range
            i = rng.randrange(n)
            j = min(n, i + rng.randint(1, 32))
            k = rng.randint(0, n)
            buf[k:k] = buf[i:j]
        elif op == 5 and n:  # truncate
            del buf[rng.randrange(n) :]
        elif op == 6:  # splice with another seed
            other = rng.choice(seeds)
            cut = rng.randint(0, n)
            buf = buf[:cut] + other[rng.randint(0, len(other)) :]
        elif op == 7 and n:  # an interesting value
            v = rng.choice(_INTERESTING)
            i = rng.randrange(n)
            buf[i : i + len(v)] = v
        else:  # replace with fresh random bytes
            buf = bytearray(rng.randbytes(rng.randint(0, 64)))
    return bytes(buf[:max_len])


def mutation_drive(
    target: Callable[[bytes], None],
    seeds: Sequence[bytes],
    *,
    runs: int,
    seed: int = 0,
    seconds: float | None = None,
    name: str = "harness",
) -> Result:
    """Call `target` on every seed, then on mutants, `runs` times in all (or until `seconds`)."""
    rng = random.Random(seed)
    result = Result(name, "mutate")
    pool = list(seeds)
    start = time.monotonic()
    deadline = None if seconds is None else start + seconds
    for i in range(runs):
        data = pool[i] if i < len(pool) else mutate(rng.choice(pool), rng, pool)
        try:
            target(data)
        except Exception:  # noqa: BLE001 - anything escaping the harness is a crash
            result.crashes += 1
            if len(result.crash_inputs) < MAX_KEPT_CRASHES:
                result.crash_inputs.append(data)
                if not result.detail:
                    result.detail = traceback.format_exc(limit=6)
        result.executions += 1
        # Keep some mutants as new parents, so edits can accumulate (bounded pool).
        if i >= len(seeds) and rng.random() < 0.02 and len(pool) < 4096:
            pool.append(data)
        if deadline is not None and (i & 0xFF) == 0 and time.monotonic() > deadline:
            break
    result.seconds = time.monotonic() - start
    return result


def reached_during(module: ModuleType, run: Callable[[], Result]) -> Result:
    """`run()` with the harness's REACHED counter reset first, its counts kept in the result."""
    counter = getattr(module, "REACHED", None)
    if counter is not None:
        counter.clear()
    result = run()
    if counter is not None:
        result.reached = dict(sorted(counter.items()))
    return result


def _mutate_child(name: str, runs: int, seconds: float | None, seed: int) -> Result:
    module = load_harness(name)
    return reached_during(module, lambda: mutation_drive(
        module.test_one_input, seeds_for(name, module), runs=runs, seed=seed, seconds=seconds, name=name
    ))


# ---------------------------------------------------------------------------------------
# atheris (libFuzzer)

_EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_DONE = re.compile(r"Done (\d+) runs in")
_PROGRESS = re.compile(r"#(\d+)\s")


def atheris_available() -> bool:
    return importlib.util.find_spec("atheris") is not None


_CHILD_FLAG = "--atheris-child"


def _atheris_child(name: str, libfuzzer_args: list[str]) -> None:
    """Fuzz one harness in this process; never returns (libFuzzer exits).

    Why not run fuzz/<name>.py itself: its `atheris.instrument_all()` instruments every
    loaded module (the standard library, cryptography's Python parts, ...), which makes each
    execution tens of times slower. Here only `trivpn` — the code under test — is
    instrumented for coverage; the invariants are the harness's own `test_one_input`.
    """
    import atheris  # type: ignore[import-untyped]  # optional, ships no type stubs

    with atheris.instrument_imports(include=["trivpn"]):
        module = load_harness(name)
    corpus = next((a for a in libfuzzer_args if not a.startswith("-")), None)
    if corpus is not None:
        for i, seed in enumerate(getattr(module, "SEEDS", ())):
            (Path(corpus) / f"harness-seed-{i}").write_bytes(bytes(seed))
    atheris.Setup([sys.argv[0], *libfuzzer_args], module.test_one_input)
    atheris.Fuzz()


def run_atheris(
    name: str, *, runs: int | None, seconds: float | None, workdir: Path, timeout: int, max_len: int
) -> Result:
    """Run one harness under libFuzzer in a child process and read its final stats."""
    scratch = workdir / name
    (scratch / "corpus").mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        _CHILD_FLAG,
        name,
        f"-max_len={max_len}",
        f"-timeout={timeout}",
        f"-artifact_prefix={scratch}/",
        "-print_final_stats=1",
        "-seed=1",
    ]
    argv.append(f"-runs={runs}" if runs is not None else f"-max_total_time={int(seconds or 1)}")
    argv.append(str(scratch / "corpus"))
    if (CORPUS_DIR / name).is_dir():
        argv.append(str(CORPUS_DIR / name))
    start = time.monotonic()
    limit = None if seconds is None else seconds * 2 + 120
    log = scratch / "output.log"  # written as the fuzzer runs: `tail -f` it to watch progress
    with log.open("w") as out:
        try:
            rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=limit, cwd=scratch).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    output = log.read_text(errors="replace")
    if rc == -1:
        output += "\n[run_all: the fuzzer process overran its time limit and was killed]"
    result = Result(name, "atheris", seconds=time.monotonic() - start)
    m = _EXECUTED.search(output) or _DONE.search(output)
    if m is None:
        progress = _PROGRESS.findall(output)
        result.executions = int(progress[-1]) if progress else 0
    else:
        result.executions = int(m.group(1))
    artifacts = [p for p in scratch.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))]
    result.crash_inputs = [p.read_bytes() for p in artifacts[:MAX_KEPT_CRASHES]]
    result.crashes = len(artifacts) or (1 if rc != 0 else 0)
    if result.crashes:
        tail = [ln for ln in output.splitlines() if ln.strip()][-25:]
        result.detail = "\n".join(tail)
    return result


# ---------------------------------------------------------------------------------------


def format_table(results: Sequence[Result]) -> str:
    head = f"{'harness':24s} {'driver':8s} {'executions':>12s} {'crashes':>8s} {'seconds':>9s} {'exec/s':>9s}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.harness:24s} {r.driver:8s} {r.executions:12,d} {r.crashes:8d} {r.seconds:9.1f} {r.rate:9,.0f}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python fuzz/run_all.py",
        description="Run every fuzz harness; print executions and crashes per harness.",
    )
    bound = p.add_mutually_exclusive_group()
    bound.add_argument("--runs", type=int, default=None, help=f"executions per harness (default {DEFAULT_RUNS:,})")
    bound.add_argument("--seconds", type=float, default=None, help="run each harness this long instead")
    p.add_argument("--driver", choices=("auto", "atheris", "mutate"), default="auto",
                   help="auto: atheris when installed, else the mutation driver")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="harnesses run at once")
    p.add_argument("--only", default="", help="comma-separated harness names (default: all)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch corpora, logs and crash inputs")
    p.add_argument("--timeout", type=int, default=10, help="atheris: seconds one input may take")
    p.add_argument("--max-len", type=int, default=0,
                   help=f"atheris: longest generated input (default {MAX_LEN}, less for some harnesses)")
    p.add_argument("--seed", type=int, default=0, help="mutation driver seed")
    args = p.parse_args(argv)
    if args.runs is None and args.seconds is None:
        args.runs = DEFAULT_RUNS
    if (args.runs is not None and args.runs < 1) or (args.seconds is not None and args.seconds <= 0):
        p.error("--runs and --seconds must be positive")
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == [_CHILD_FLAG]:
        _atheris_child(raw[1], raw[2:])
        return 0
    args = parse_args(raw)
    names = harness_names()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            print(f"run_all: unknown harness(es): {', '.join(unknown)}; have: {', '.join(names)}", file=sys.stderr)
            return 2
        names = wanted
    driver = args.driver
    if driver == "auto":
        driver = "atheris" if atheris_available() else "mutate"
    elif driver == "atheris" and not atheris_available():
        print("run_all: atheris is not installed (python -m pip install atheris)", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="trivpn-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bound = f"{args.runs:,} executions" if args.runs is not None else f"{args.seconds:g} s"
    print(f"fuzzing {len(names)} harnesses with {driver}, {bound} each, {args.jobs} at a time; "
          f"workdir {workdir}", flush=True)
    results: list[Result] = []
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {}
        for name in names:
            if driver == "atheris":
                fut = pool.submit(run_atheris, name, runs=args.runs, seconds=args.seconds,
                                  workdir=workdir, timeout=args.timeout,
                                  max_len=args.max_len or MAX_LEN_FOR.get(name, MAX_LEN))
            else:
                fut = pool.submit(_mutate_child, name, args.runs or 10**12, args.seconds, args.seed)
            futures[fut] = name
        for fut in concurrent.futures.as_completed(futures):
            r = fut.result()
            results.append(r)
            print(f"  {r.harness}: {r.executions:,} executions, {r.crashes} crashes, {r.seconds:.1f} s",
                  flush=True)
            for stage, count in r.reached.items():
                print(f"      reached {stage}: {count:,} inputs", flush=True)
            for i, data in enumerate(r.crash_inputs):
                path = workdir / r.harness / f"mutate-crash-{i}.bin"
                if driver == "mutate":
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
    results.sort(key=lambda r: r.harness)
    print()
    print(format_table(results))
    crashed = [r for r in results if r.crashes]
    for r in crashed:
        print(f"\n=== {r.harness}: crash ===\n{r.detail}")
    total = sum(r.executions for r in results)
    print(f"\ntotal {total:,} executions, {sum(r.crashes for r in results)} crashes; workdir {workdir}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
