"""A bounded run of the readers' fuzzer (benches/fuzz_readers.py).

Mutants of valid safetensors and IDX files must decode or raise ValueError:
no other exception, no crash (the fuzz loop runs in child processes), no
hang, no huge allocation. The run also checks that the mutants reach many
different checks and that some still decode, so the fuzzer is not just
producing inputs the first check rejects.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "benches" / "fuzz_readers.py"
EXECS = 20_000


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_readers", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_readers"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["fuzz_readers"]


@pytest.fixture(scope="module")
def stats(fuzz, tmp_path_factory):
    findings = tmp_path_factory.mktemp("fuzz-findings")
    return fuzz.run_campaign(EXECS, 0, ["safetensors", "idx"], 2, findings, quiet=True)


def _describe(st) -> str:
    return "\n".join(f"{f['kind']}: {f['file']}\n  input: {f['hex']}" for f in st["findings"])


@pytest.mark.parametrize("target", ["safetensors", "idx"])
def test_no_findings(stats, target):
    st = stats[target]
    assert sum(st["counts"].values()) == EXECS
    assert st["counts"].get("finding", 0) == 0, _describe(st)


@pytest.mark.parametrize("target", ["safetensors", "idx"])
def test_mutants_reach_deep_checks(stats, target):
    st = stats[target]
    counts, kinds = st["counts"], st["kinds"]
    # Some mutants still decode, and the rejected ones hit many checks.
    assert counts.get("ok", 0) >= EXECS // 50
    assert counts.get("ValueError", 0) >= EXECS // 2
    assert len(kinds) >= 5, kinds
    # No single check rejects nearly everything.
    assert kinds.most_common(1)[0][1] < 0.6 * EXECS


def test_safetensors_mutants_reach_the_model_loaders(stats):
    kinds = stats["safetensors"]["kinds"]
    deep = [k for k in kinds if not k.startswith("not a valid safetensors file")]
    # Past the crate's checks: dtypes, state_dict keys and shapes, architecture JSON.
    assert any("cannot read" in k for k in deep), deep
    assert any("state_dict" in k for k in deep), deep
    assert len(deep) >= 5, deep


def test_message_kind_folds_names_and_numbers(fuzz):
    kind = fuzz.message_kind('<bytes>: tensor "w" has shape [3, 4] (12 values)')
    assert kind == "tensor Q has shape [N, N]"
