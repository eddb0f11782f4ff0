"""keep_freed_memory: large freed blocks are reused (no page faults), values unchanged, opt-out."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from pellucid._memory import ENV_VAR

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="the setting exists on Linux with glibc only")

# Allocates, fills and frees a 64 MiB tensor (above any mmap threshold glibc takes on its own)
# twenty times; counts the minor page faults of the last eight. By default every block comes
# fresh from the kernel; kept, a freed block is reused once neighbours have merged (a few rounds
# of 64-byte-aligned requests: at most a block or two faults after the twelfth).
_PROBE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from pellucid._memory import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else None
    sums = []
    for i in range(20):
        if i == 12:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.empty(16 * 1024 * 1024).fill_(i + 0.5)
        sums.append(float(t[::4096].sum()))
        del t
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    print(json.dumps({"applied": applied, "faults": after - before, "sums": sums}))
""")


def _probe(mode, **env):
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_without_page_faults_and_the_values_are_the_same():
    default, kept = _probe("default"), _probe("keep")
    assert kept["applied"] is True
    pages = 64 * 1024 * 1024 // os.sysconf("SC_PAGE_SIZE")
    assert default["faults"] >= 8 * pages * 0.9  # every 64 MiB block comes back from the kernel
    assert kept["faults"] <= 2 * pages  # the same memory, reused
    assert kept["sums"] == default["sums"]


def test_the_environment_variable_turns_it_off():
    off = _probe("keep", **{ENV_VAR: "0"})
    assert off["applied"] is False
    assert off["faults"] >= 8 * 64 * 1024 * 1024 // os.sysconf("SC_PAGE_SIZE") * 0.9


def test_the_command_line_applies_it_once_a_command_runs(monkeypatch, tmp_path):
    import pellucid._memory as memory
    import pellucid.cli.main  # noqa: F401 (the module, not the function pellucid.cli exports)

    cli_main = sys.modules["pellucid.cli.main"]

    calls = []
    monkeypatch.setattr(cli_main, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli_main.main(["inspect", "--help"]) == 0  # --help exits in the parser: nothing applied
    assert calls == []
    assert cli_main.main(["train", "no-such-recipe", "--out", str(tmp_path / "x")]) == 2  # a usage error
    assert calls == []
    assert cli_main.main(["inspect", str(tmp_path / "missing"), "--list"]) == 2  # the command ran, and said no
    assert calls == [1]
    assert memory.ENV_VAR == ENV_VAR
