"""emtools.cpus: thread counts follow the CPUs the process may use."""

from __future__ import annotations

import os

from emtools import cpus


def test_follows_the_affinity_mask_not_the_machine(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert cpus.usable_cpus() == 3
    assert cpus.usable_cpus(cap=2) == 2


def test_cap_and_floor(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert cpus.usable_cpus() == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(), raising=False)
    assert cpus.usable_cpus() == 1


def test_without_affinity_uses_the_cpu_count(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert cpus.usable_cpus() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert cpus.usable_cpus() == 4


def test_huge_pages_are_asked_for_unless_the_user_said_otherwise(monkeypatch):
    monkeypatch.delenv(cpus.HUGE_PAGES_ENV, raising=False)
    cpus.prefer_huge_pages()
    assert os.environ[cpus.HUGE_PAGES_ENV] == "1"
    monkeypatch.setenv(cpus.HUGE_PAGES_ENV, "0")
    cpus.prefer_huge_pages()
    assert os.environ[cpus.HUGE_PAGES_ENV] == "0"


def test_a_tool_sets_it_before_torch_allocates(tmp_path):
    """A fresh em-predict process: the variable is set by the time torch is imported, so torch's
    allocator reads it (torch reads it once, at its first allocation)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != cpus.HUGE_PAGES_ENV}
    code = ("import os, sys\n"
            "from emtools.cli.common import run_tool\n"
            "def body():\n"
            "    assert 'torch' not in sys.modules\n"
            f"    print(os.environ.get('{cpus.HUGE_PAGES_ENV}'))\n"
            "run_tool('em-test', body, debug=True)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
