"""CI smoke run of every fuzz harness in fuzz/ (the long runs: `python fuzz/run_all.py`).

Each harness's `test_one_input` gets its seed corpus and then a few thousand seeded
mutants of it from the dependency-free driver in fuzz/run_all.py; when atheris is
installed, each harness also gets a short coverage-guided run. A crash is any exception
escaping `test_one_input`: the harnesses themselves catch exactly the errors their parsers
are allowed to raise.

A smoke run that never gets past a length check proves nothing, so for the harnesses that
count it (`REACHED`) the run must also reach the decoders behind those checks: the figures
are asserted here and printed in the summary (`fuzz reach` section).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Mutants per harness in the smoke run (about a second each at worst).
SMOKE_RUNS = 3000
ATHERIS_RUNS = 2000


def _load_run_all() -> ModuleType:
    spec = importlib.util.spec_from_file_location("trivpn_fuzz_run_all", ROOT / "fuzz" / "run_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


run_all = _load_run_all()
HARNESSES = run_all.harness_names()

#: Stages each smoke run must reach (REACHED keys of the harness), i.e. the decoders behind
#: the header, length and authentication checks.
MUST_REACH = {
    "fuzz_manager_frames": ["frame decoder: frames", "protobuf: a message", "header: valid",
                            "protobuf: network_settings"],
    "fuzz_reverse_frames": ["decoder alone: frames", "fresh relay: frames handled",
                            "fresh relay: authenticated", "bound relay: frames handled",
                            "bound client: frames handled"],
    "fuzz_reverse_routing": ["sni: hello complete", "sni: a server name", "SniReader: routed",
                             "HeadReader: routed"],
    "fuzz_data_packet": [
        *(f"wire {f}: {s}" for f in ("aead", "cbc")
          for s in ("an authentic packet", "a packet delivered")),
        *(f"sealed {f}: {s}" for f in ("aead", "cbc")
          for s in ("post-decryption parsing", "data", "ping", "occ", "comp")),
    ],
}


def test_every_parser_has_a_harness_and_a_seed_corpus() -> None:
    expected = {"fuzz_control_packet", "fuzz_tcp_framing", "fuzz_wrap", "fuzz_keymethod",
                "fuzz_push_reply", "fuzz_profile", "fuzz_data_packet"}
    assert expected <= set(HARNESSES)
    for name in expected:
        files = list((ROOT / "fuzz" / "corpus" / name).iterdir())
        assert files, f"fuzz/corpus/{name} is empty"
    for name in MUST_REACH:
        assert name in HARNESSES and list((ROOT / "fuzz" / "corpus" / name).glob("gen-*"))


@pytest.mark.parametrize("name", HARNESSES)
def test_smoke_mutation_run(name: str, fuzz_reach: dict[str, dict[str, int]]) -> None:
    harness = run_all.load_harness(name)
    seeds = run_all.seeds_for(name, harness)
    result = run_all.reached_during(harness, lambda: run_all.mutation_drive(
        harness.test_one_input, seeds, runs=SMOKE_RUNS, seed=1, name=name))
    assert result.executions == SMOKE_RUNS
    assert result.crashes == 0, (
        f"{name} crashed on {result.crash_inputs[0].hex()}:\n{result.detail}"
    )
    fuzz_reach[name] = result.reached
    missing = [stage for stage in MUST_REACH.get(name, []) if result.reached.get(stage, 0) <= 0]
    assert not missing, f"{name}: no input of {SMOKE_RUNS} reached {missing}; got {result.reached}"


def test_the_driver_reports_crashes() -> None:
    def fragile(data: bytes) -> None:
        if len(data) > 2 and data[0] == 0:
            raise ValueError("found")

    result = run_all.mutation_drive(fragile, [b"\x01abc"], runs=5000, seed=3)
    assert result.crashes > 0 and result.crash_inputs[0][0] == 0
    assert "ValueError: found" in result.detail


def test_framing_harness_catches_a_framer_that_loses_a_packet(monkeypatch: pytest.MonkeyPatch) -> None:
    harness = run_all.load_harness("fuzz_tcp_framing")
    original = harness.TCPFramer.feed

    def lossy(self, data):  # type: ignore[no-untyped-def]
        return original(self, data)[1:]  # drops the first packet completed by each call

    stream = b"\x00" + b"\x00\x01A\x00\x02BC"
    harness.test_one_input(stream)  # the real framer passes
    monkeypatch.setattr(harness.TCPFramer, "feed", lossy)
    with pytest.raises(AssertionError):
        harness.test_one_input(stream)


@pytest.mark.skipif(not run_all.atheris_available(), reason="atheris not installed (pip install atheris)")
def test_smoke_atheris_run(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "run_all.py"), "--runs", str(ATHERIS_RUNS),
         "--driver", "atheris", "--jobs", "2", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("fuzz_") and "atheris" in ln]
    assert {row[0] for row in rows} == set(HARNESSES)
    for row in rows:
        assert int(row[2].replace(",", "")) >= ATHERIS_RUNS and row[3] == "0", row


def test_data_packet_harness_catches_a_receiver_that_delivers_pings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sealed mode's reference model bites: a receiver that no longer recognises the
    keepalive ping (and so hands it to the TUN as an IP packet) is a crash."""
    from trivpn.datachannel import receiver

    harness = run_all.load_harness("fuzz_data_packet")
    sealed_ping = bytes([harness.SEALED]) + receiver.PING_MAGIC
    harness.test_one_input(sealed_ping)  # the real receiver passes
    monkeypatch.setattr(receiver, "PING_MAGIC", b"\x00" * 16)
    with pytest.raises(AssertionError, match="reference"):
        harness.test_one_input(sealed_ping)
