"""Every example in docs/api.md runs, unchanged but for its last line.

Each ```python block there is a complete program ending in `trio.run(main, ...)`. The test
compiles the block without that line and awaits `main` itself: a client example
(`main(profile)`) gets a profile for an embedded `trivpn.serve` server on 127.0.0.1 whose
far side answers pings at 10.8.0.1; a server example (`main()`) runs as it is."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.profiles import shared_pki
from helpers.serving import answer_echo, client_profile, server_config

import trivpn

DOC = Path(__file__).resolve().parents[3] / "docs" / "api.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
BOUND = 30  # seconds any one example may take


def _examples() -> list[tuple[int, str]]:
    text = DOC.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in BLOCK.finditer(text)]


def test_the_doc_has_examples_of_both_ends() -> None:
    codes = [code for _, code in _examples()]
    assert len(codes) >= 5
    assert any("trivpn.serve(" in c for c in codes) and any("trivpn.connect(" in c for c in codes)
    assert "trio-only" in DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize(("line", "code"), _examples(), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
async def test_example_runs(line: int, code: str, capsys: pytest.CaptureFixture[str]) -> None:
    body, last = code.rstrip("\n").rsplit("\n", 1)
    assert last.startswith("trio.run(main"), f"docs/api.md:{line}: an example ends in trio.run(main, ...)"
    namespace: dict[str, Any] = {"__name__": f"docs_api_line{line}"}
    exec(compile(body, f"docs/api.md:{line}", "exec"), namespace)  # noqa: S102 - our own docs
    main = namespace["main"]
    with trio.fail_after(BOUND):
        if not inspect.signature(main).parameters:
            await main()
        else:
            pki = shared_pki()
            async with trivpn.serve(server_config(pki)) as server, trio.open_nursery() as nursery:
                nursery.start_soon(answer_echo, server, [])
                await main(trivpn.parse_profile(client_profile(pki, server.addresses[0][1])))
                nursery.cancel_scope.cancel()
    assert capsys.readouterr().out  # every example reports what it did
