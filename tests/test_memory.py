"""A phase's peak memory: what the phase itself allocated, not the peak of the process so far."""

from __future__ import annotations

import torch

from sapo.evolution.memory import PhaseMemory


def test_each_phase_reports_its_own_peak():
    memory = PhaseMemory()
    memory.start()
    block = torch.ones(96 * 2**20)  # 384 MiB, written, so resident
    del block
    heavy = memory.summary()
    memory.start()
    light = memory.summary()
    assert heavy["peak_rss_scope"] == light["peak_rss_scope"] == "phase"  # Linux, as in CI
    assert heavy["peak_rss_gib"] - light["peak_rss_gib"] > 0.3
    assert light["peak_rss_gib"] > 0.05  # the interpreter and torch themselves
