"""benchmarks/ab.py: a step split into generation, rollout forwards and update; unequal work between arms is
refused; the table's ratios are the arms' medians (hand-computed)."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import ab  # noqa: E402


def result(
    throughput: float, gen: float, lp: float, ref: float, rm: float, upd_fwd: float, rest: float, opt=0.0
):
    b = {
        "rollout: generation": gen,
        "rollout: policy log-prob forward": lp,
        "rollout: reference forward": ref,
        "rollout: reward forward": rm,
        "update: policy forward": upd_fwd,
        "update: optimizer": opt,
        "update: backward + loss maths": rest,
        "Lightning loop + data (outside training_step)": 0.5,
    }
    b["step total"] = sum(b.values())
    return {"throughput": throughput, "breakdown_s": b}


def test_phases_split_the_step() -> None:
    p = ab.phases(result(1.0, 4.0, 1.0, 1.0, 0.5, 1.5, 2.5, opt=0.5))
    assert p == {
        "step": 11.5,
        "generation": 4.0,
        "rollout forwards": 2.5,
        "update": 4.5,
        "rollout forwards + update": 7.0,
        "update fwd + bwd": 4.0,
        "optimizer": 0.5,
    }


def test_the_table_compares_medians_with_the_first_arm() -> None:
    plain = [result(1.0, 4.0, 1.0, 1.0, 0.5, 1.5, 3.0), result(0.8, 4.0, 2.0, 1.0, 0.5, 1.5, 3.0)] * 2
    shared = [result(2.0, 4.0, 0.5, 0.5, 0.25, 0.75, 1.5)] * 4  # forwards + update 3.5 s against 7 (median)
    text = ab.table({"plain": plain[:3], "shared": shared[:3]}, "t")
    assert "| shared | 2.000 | 8.00 | 4.00 | 1.25 | 2.25 | 3.50 |" in text
    assert "rollouts/s 2.00x; rollout forwards + update 2.00x faster" in text


def test_unequal_work_between_arms_is_refused() -> None:
    w = {"rollouts": 8, "prompt_tokens": 256, "response_tokens": 100, "generated_positions": 512}
    ab.check_work({"a": [w], "b": [{**w, "response_tokens": 101}]}, tolerance=0.02)  # within 2 %
    with pytest.raises(SystemExit, match=r"unequal work \(b against a: \['rollouts'\]\)"):
        ab.check_work({"a": [w], "b": [{**w, "rollouts": 16}]}, tolerance=0.02)
    with pytest.raises(SystemExit, match="response_tokens"):
        ab.check_work({"a": [w], "b": [{**w, "response_tokens": 110}]}, tolerance=0.02)


def test_one_arm_is_refused() -> None:
    with pytest.raises(SystemExit, match="at least two arms"):
        ab.main(["--arm", "only", "shared_prefix=true"])


def test_the_floor_table_divides_each_phase_by_its_own_floor(monkeypatch) -> None:
    """Each arm's floor is ceiling.step_bounds at the arm's settings, shared or not (by hand); arms whose work
    differs only in where π_old comes from (or the generation engine) share one timing; each phase's floor is
    the fastest of the passes."""
    import ceiling  # noqa: PLC0415

    class Bound:
        def __init__(self, shared: bool) -> None:
            f = 1.0 if shared else 2.0  # the shared floor is half the equal-work floor here
            f *= 1.5 if seen.count(shared) == 1 else 1.0  # each floor's first timing slower: not taken
            self.phases = {"generation": 1.0 * f, "rollout forwards": 0.5 * f, "update": 0.25 * f}
            self.attention = {"generation": 0.0, "rollout forwards": 0.5 * f, "update": 0.25 * f}

    import common  # noqa: PLC0415

    seen = []
    monkeypatch.setattr(ceiling, "step_bounds", lambda task, s, shared: seen.append(shared) or Bound(shared))
    monkeypatch.setattr(ceiling, "optimizer_seconds", lambda task, s: 0.25)  # the same steps in both arms
    # no prepare.py run needed: the settings as a fresh clone has them (no benchmarks/runs/)
    monkeypatch.setattr(
        common.Settings, "load", classmethod(lambda cls, size, precision=None: cls(size=size))
    )
    med = {
        "plain": {"step": 10.0, "generation": 4.0, "rollout forwards": 2.0, "update fwd + bwd": 3.0},
        "shared": {"step": 5.0, "generation": 2.0, "rollout forwards": 1.0, "update fwd + bwd": 1.25},
    }
    med["plain"]["optimizer"] = med["shared"]["optimizer"] = 0.5
    med["first"] = {**med["shared"], "rollout forwards": 0.5}
    arms = {
        "plain": ["shared_prefix=false"],
        "shared": ["shared_prefix=true"],
        # the same work but for where π_old comes from, generated elsewhere: the shared arm's floor, once
        "first": ["shared_prefix=true", "old_logprobs_from_update=true", "generation=vllm"],
        # log-probs computed the release before's way, a compiled engine: the same floor again
        "old": ["shared_prefix=true", "logprobs=autograd", "vllm_enforce_eager=false"],
    }
    med["old"] = med["shared"]
    text = ab.floor_table("grpo", "toy", "fp32", arms, [], med)
    assert seen == [False] * ab.FLOOR_PASSES + [True] * ab.FLOOR_PASSES  # the fastest pass of each
    # plain: floors 2, 2, 1, 0.25 (step 5.25): 4/2, 2/2, 3/1, 0.5/0.25; step 10/5.25 = 1.90x, 52 %
    assert "| plain | equal work | 5.25 | 2.00x | 1.00x | 3.00x | 2.00x | 1.90x | 52% |" in text
    # shared: floors 1, 1, 0.5, 0.25 (step 2.75): 2/1, 1/1, 1.25/0.5, 0.5/0.25; 5/2.75 = 1.82x, 55 %
    assert "| shared | shared prefix | 2.75 | 2.00x | 1.00x | 2.50x | 2.00x | 1.82x | 55% |" in text
    assert "| first | shared prefix | 2.75 | 2.00x | 0.50x | 2.50x | 2.00x | 1.82x | 55% |" in text
    assert "| old | shared prefix | 2.75 |" in text


def test_an_arm_runs_its_own_switches_not_the_last_run_py_settings(monkeypatch) -> None:
    """runs/<size>/settings.json keeps run.py's last --set (shared_prefix=true, …): every arm starts its
    switches from Settings' defaults, then --set, then its own."""
    import common  # noqa: PLC0415

    envs = []

    class Done:
        returncode, stdout, stderr = 0, "", ""

    monkeypatch.setattr(ab.subprocess, "run", lambda cmd, env, **kw: envs.append(env) or Done())
    monkeypatch.setattr(ab, "parse_result", lambda out: {})
    ab.one_run("grpo", "toy", "bf16", ["minibatch_by_group=true", "generation=vllm"], ["logprobs=autograd"])
    assignments = envs[0]["LIT_RLHF_BENCH_SET"].split()
    assert envs[0]["LIT_RLHF_BENCH_GENERATION"] == "vllm"
    last_run_py = common.Settings(
        size="toy", shared_prefix="true", old_logprobs_from_update="true", vllm_enforce_eager="false"
    )
    s = last_run_py.override(assignments)
    assert (s.shared_prefix, s.minibatch_by_group, s.old_logprobs_from_update) == ("false", "true", "false")
    assert (s.logprobs, s.vllm_enforce_eager) == ("autograd", "true")


def test_autograd_logprobs_arm_equals_the_shipped_log_probs(monkeypatch) -> None:
    """``logprobs=autograd`` (lit_side.py) swaps in the release before's maths: same values and gradients."""
    import lit_side  # noqa: PLC0415

    from lit_rlhf.rlhf import logprobs_from_logits  # noqa: PLC0415
    from lit_rlhf.rlhf.logprobs import SelectiveLogSoftmax  # noqa: PLC0415

    g = torch.Generator().manual_seed(0)
    base = (torch.randn(2, 5, 13, generator=g) * 3).bfloat16()
    labels = torch.randint(0, 13, (2, 5), generator=g)
    runs = []
    for swap in (False, True):
        if swap:
            monkeypatch.setattr(SelectiveLogSoftmax, "apply", SelectiveLogSoftmax.apply)  # undone after
            lit_side.autograd_logprobs()
        x = base.clone().requires_grad_()
        out = logprobs_from_logits(x, labels, 0.7)
        out.sum().backward()
        runs.append((out.detach(), x.grad, SelectiveLogSoftmax.apply))
    (a, ga, fa), (b, gb, fb) = runs
    assert fa is not fb  # the swap took
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(ga.float(), gb.float(), atol=1e-2, rtol=1e-2)


def test_the_optimizer_floor_by_hand(monkeypatch) -> None:
    """Every optimizer step of every trained model, each a bare step over that model's weights."""
    import ceiling  # noqa: PLC0415
    import common  # noqa: PLC0415
    from group import group_plan  # noqa: PLC0415

    # toy: GPT-2, 4 layers × 256, 128 positions; a 1,000-word vocabulary (no prepare.py run needed)
    monkeypatch.setitem(common.MODELS, "toy", {**common.MODELS["toy"], "vocab_size": 1000})
    d, n, V, T = 256, 4, 1000, 128
    block = (
        4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    )  # 2 norms, 4 Linears
    w = V * d + T * d + n * block + 2 * d  # embeddings, blocks, final norm; the head is the token embedding
    assert ceiling.trained_weights("toy") == w
    assert ceiling.trained_weights("toy", critic=True) == w + d + 1  # the backbone + a value head
    s = common.Settings(size="toy")
    plan = group_plan(s, "grpo")
    assert ceiling.optimizer_seconds("grpo", s, step=float) == plan.epochs * plan.minibatches * w
    ppo = ceiling.optimizer_seconds("ppo", s, step=float)
    assert ppo == s.ppo_epochs * s.ppo_minibatches * (w + w + d + 1)
    assert 0 < ceiling.adamw_step_seconds(1000, reps=1) < 1


def test_the_step_breakdown_keeps_the_optimizer_apart() -> None:
    import lit_side  # noqa: PLC0415

    steps = [
        {
            "training_step": 9.0,
            "rollout: generation": 4.0,
            "update: policy forward": 1.0,
            "update: optimizer": 0.5,
            "update: backward": 2.0,
        }
    ] * 3
    out, update = lit_side.breakdown(steps, warmup=1, step_total=10.0)
    assert out["update: loss maths + untimed rollout work"] == 1.5  # 9 − 4 − 1 − 0.5 − 2
    assert out["update: backward"] == 2.0
    assert update == 5.0 and out["update: optimizer"] == 0.5
    assert out["Lightning loop + data (outside training_step)"] == 1.0


def test_shared_forward_times_the_three_paths_it_names(monkeypatch) -> None:
    """benchmarks/shared_forward.py: ``split`` takes the KV-cache path and puts the switch back; ``grouped``
    the packed forward; all three give the plain log-probs on its batch (a tiny Llama)."""
    import shared_forward  # noqa: PLC0415
    from test_shared_prefix import model  # noqa: PLC0415

    from lit_rlhf.rollout import shared_prefix as sp  # noqa: PLC0415

    monkeypatch.setattr(shared_forward, "P", 6)
    monkeypatch.setattr(shared_forward, "R", 8)
    m = model("llama")
    ids, mask = shared_forward.batch(m.config.vocab_size, G=3, prompts=2)
    # 2 prompts × 3; the first prompt left-padded by 5, one response 7 tokens short
    assert (
        ids.shape == (6, 14)
        and int(mask[:3, :5].sum()) == 0
        and mask[1].tolist() == [0] * 5 + [1] * 2 + [0] * 7
    )
    assert int(mask.sum()) == 6 * 14 - 3 * 5 - 7
    taken = []
    for name in ("split_forward", "grouped_forward"):
        real = getattr(sp, name)
        monkeypatch.setattr(sp, name, lambda *a, _r=real, _n=name, **k: taken.append(_n) or _r(*a, **k))
    groupable = sp._groupable
    out = {k: f(m, ids, mask, 6, 1.0) for k, f in shared_forward.paths().items()}
    assert taken == ["split_forward", "grouped_forward"] and sp._groupable is groupable
    keep = mask[:, 6:].bool()
    for k in ("split", "grouped"):
        torch.testing.assert_close(out[k][keep], out["plain"][keep], atol=2e-5, rtol=1e-4)
    # --autograd-logprobs: the release before's log-probs inside the call, the shipped ones after it
    import logprobs  # noqa: PLC0415

    from lit_rlhf.rlhf.logprobs import SelectiveLogSoftmax  # noqa: PLC0415

    calls, original = [], logprobs.autograd
    monkeypatch.setattr(logprobs, "autograd", lambda *a: calls.append(1) or original(*a))
    fns = shared_forward.paths(autograd_logprobs=True)
    for k in ("plain", "grouped"):
        got = fns[f"{k}, autograd log-probs"](m, ids, mask, 6, 1.0)
        torch.testing.assert_close(got[keep], out[k][keep], atol=2e-5, rtol=1e-4)
    assert len(calls) >= 2 and "apply" not in vars(SelectiveLogSoftmax)


def test_shared_forward_counts_the_rows_each_path_multiplies(monkeypatch) -> None:
    """``--bound``'s FLOP shares come from ``matmul_rows``: the rows a body Linear and the LM head really see
    in each path (hooks on a tiny Llama, 2 prompts × 3), and the best time by hand."""
    import shared_forward  # noqa: PLC0415
    from test_shared_prefix import model  # noqa: PLC0415

    P, R, G, U = 6, 8, 3, 2
    monkeypatch.setattr(shared_forward, "P", P)
    monkeypatch.setattr(shared_forward, "R", R)
    m = model("llama")
    ids, mask = shared_forward.batch(m.config.vocab_size, G=G, prompts=U)
    rows: dict[str, int] = {}

    def count(name: str):
        def hook(module, inputs, output) -> None:
            rows[name] = rows.get(name, 0) + inputs[0].shape[:-1].numel()

        return hook

    m.lm_head.register_forward_hook(count("head"))
    m.model.layers[0].mlp.up_proj.register_forward_hook(count("body"))
    for k, f in shared_forward.paths().items():
        rows.clear()
        f(m, ids, mask, P, 1.0)
        assert (rows["body"], rows["head"]) == shared_forward.matmul_rows(k, U * G, U, P, R), k
    assert shared_forward.matmul_rows("grouped", 6, 2, 6, 8) == (2 * 6 + 6 * 7, 2 + 6 * 7)
    assert shared_forward.best_seconds(4.0, 0.5, 0.5) == 2.25  # 0.5 + 3.5 / 2
