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
