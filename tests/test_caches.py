"""Caches and checkpoints survive damage: a corrupt r_ref cache is recomputed, a save that dies half-way
leaves the previous checkpoint intact, and everything loads with weights_only=True."""

from __future__ import annotations

import pytest
import torch

from lit_rlhf.rewards.reference import ReferenceSpec, ReferenceTable, load_or_compute, reduce_samples
from lit_rlhf.run.checkpoint import AtomicCheckpointIO


def test_corrupt_reference_cache_is_recomputed(tmp_path):
    path = tmp_path / "samples-x.pt"
    path.write_bytes(b"not a torch file")
    calls = []

    def compute():
        calls.append(1)
        return {"helpful": torch.arange(6.0).view(2, 3)}

    value, cached = load_or_compute(path, compute)
    assert not cached and calls == [1]
    again, cached = load_or_compute(path, compute)
    assert cached and calls == [1]
    torch.testing.assert_close(again["helpful"], value["helpful"])


def test_pickled_code_in_a_cache_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('code ran')",))

    path = tmp_path / "samples-evil.pt"
    torch.save({"helpful": Evil()}, path)
    value, cached = load_or_compute(path, lambda: {"helpful": torch.zeros(1, 1)})
    assert not cached  # refused by weights_only=True, then recomputed
    assert torch.equal(value["helpful"], torch.zeros(1, 1))


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def dying_save(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left behind


def test_reference_statistics():
    samples = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0], [10.0, 10.0, 10.0, 10.0, 10.0]])
    torch.testing.assert_close(reduce_samples(samples, ReferenceSpec("mean")), torch.tensor([2.0, 10.0]))
    q = reduce_samples(samples, ReferenceSpec("quantile", q=0.85))
    torch.testing.assert_close(q, torch.tensor([3.4, 10.0]))  # linear interpolation: 0.85·4 = 3.4
    with pytest.raises(ValueError, match="statistic must be one of"):
        ReferenceSpec("median")
    with pytest.raises(ValueError, match="needs reference.response"):
        ReferenceSpec("response")
    table = ReferenceTable([5, 9], {"a": torch.tensor([1.0, 2.0])})
    torch.testing.assert_close(table.lookup(torch.tensor([9, 5, 9])), torch.tensor([[2.0], [1.0], [2.0]]))
    with pytest.raises(KeyError, match="prompt id 7"):
        table.lookup(torch.tensor([7]))
