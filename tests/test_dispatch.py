"""The measured dispatch: decided once per op and shape class, forced by $EDH_<OP>, and every
candidate of the packed-or-plain linear gives F.linear's numbers, and both ways of summing beam
search's log-probabilities give the same candidates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edh.layers import dispatch, packed


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch):
    monkeypatch.delenv("EDH_LINEAR", raising=False)
    monkeypatch.delenv("EDH_BEAM_SCORES", raising=False)
    dispatch.reset()
    yield
    dispatch.reset()


def test_decides_once_per_shape_class():
    calls = {"slow": 0, "fast": 0}

    def slow():
        calls["slow"] += 1
        sum(range(20000))

    def fast():
        calls["fast"] += 1

    for _ in range(5):
        assert dispatch.choose("toy", ("fp32", 8), {"slow": slow, "fast": fast}) == "fast"
    assert calls == {"slow": dispatch.TRIALS + 1, "fast": dispatch.TRIALS + 1}  # timed at the first call only
    assert dispatch.decisions() == {("toy", ("fp32", 8)): "fast"}
    dispatch.choose("toy", ("fp32", 32), {"slow": slow, "fast": fast})  # a new shape class measures again
    assert calls["fast"] == 2 * (dispatch.TRIALS + 1)


def test_env_var_forces_the_choice_without_measuring(monkeypatch):
    def never():
        raise AssertionError("a forced choice must not time the candidates")

    monkeypatch.setenv("EDH_TOY", "slow")
    assert dispatch.choose("toy", 1, {"slow": never, "fast": never}) == "slow"
    assert dispatch.decisions() == {}
    monkeypatch.setenv("EDH_TOY", "quick")
    with pytest.raises(ValueError, match=r"EDH_TOY='quick' is not one of slow, fast or auto"):
        dispatch.choose("toy", 1, {"slow": never, "fast": never})


@pytest.mark.skipif(not packed.available(), reason="this PyTorch build has no oneDNN linear ops")
@pytest.mark.parametrize("choice", ["packed", "plain", "auto"])
def test_every_linear_candidate_matches_f_linear(monkeypatch, choice):
    monkeypatch.setenv("EDH_LINEAR", choice)
    torch.manual_seed(0)
    weight, bias = torch.randn(96, 32), torch.randn(96)
    x = torch.randn(8, 1, 32)
    with torch.inference_mode():
        torch.testing.assert_close(packed.linear(x, weight, bias), F.linear(x, weight, bias), atol=1e-5, rtol=1e-5)
    key = ("linear", packed.shape_class(x, weight, bias))
    if choice == "auto":  # measured once: both candidates ran, one was kept
        assert dispatch.decisions()[key] in ("packed", "plain")
    else:  # forced: nothing measured, and only the packed path packs the weight
        assert key not in dispatch.decisions()
        assert packed.is_packed(weight) == (choice == "packed")


def test_shape_class_rounds_rows_up_to_a_power_of_two():
    weight = torch.empty(16, 8)
    assert packed.shape_class(torch.empty(3, 1, 8), weight, None) == ("float32", 4, 16, 8, False)
    assert packed.shape_class(torch.empty(32, 8).bfloat16(), weight, weight[0]) == ("bfloat16", 32, 16, 8, True)


@pytest.mark.parametrize("choice", ["logsumexp", "log_softmax", "auto"])
def test_both_ways_of_summing_beam_scores_agree(monkeypatch, choice):
    from edh.ops.generation import summed_log_probs

    monkeypatch.setenv("EDH_BEAM_SCORES", choice)
    torch.manual_seed(0)
    logits, scores = torch.randn(6, 50) * 8, torch.randn(6)
    scores[1:4] = float("-inf")  # beams not started yet (step 0 of beam search)
    reference = scores[:, None] + torch.log_softmax(logits.double(), dim=-1)
    torch.testing.assert_close(summed_log_probs(logits, scores).double(), reference, atol=1e-5, rtol=1e-5)
    key = ("beam_scores", ("torch.float32", 8, 50))
    assert (dispatch.decisions().get(key) in ("logsumexp", "log_softmax")) == (choice == "auto")


@pytest.mark.skipif(not packed.available(), reason="this PyTorch build has no oneDNN linear ops")
def test_pinned_decisions_reach_weights_that_decided_before():
    weight, x = torch.randn(24, 16), torch.randn(8, 1, 16)
    with torch.inference_mode():
        packed.linear(x, weight)
        key = ("linear", packed.shape_class(x, weight, None))
        for kernel in ("packed", "plain"):
            dispatch.pin({key: kernel})
            packed.linear(x, weight)
            assert packed._ENTRIES[id(weight)].choices[(x.shape, False)] == kernel
