"""Truncated BPTT, the carried state, clipping and skipped steps, checked against explicit computations."""

import copy
import json
import math
import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import make_model
from lm.config import TrainConfig
from lm.eval.figures import EvalResult
from lm.train.loop import (
    Hooks,
    MetricsLog,
    TrainingState,
    batchify,
    clip_gradients,
    fit,
    iterate_windows,
    learning_rate,
    train_step,
)


def _cell_step(cell, layer, x, state):
    """One time step of layer 0 of an nn.RNN/LSTM/GRU, written out from its weights. x: (B, C), state: (B, S)."""
    w_ih, w_hh, b_ih, b_hh = layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0
    if cell == "lstm":
        h, c = state.chunk(2, dim=-1)
        i, f, g, o = (x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, torch.cat([h, c], -1)
    if cell == "gru":
        xr, xz, xn = (x @ w_ih.T + b_ih).chunk(3, dim=-1)
        hr, hz, hn = (state @ w_hh.T + b_hh).chunk(3, dim=-1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * state
        return h, h
    act = torch.tanh if cell == "rnn_tanh" else torch.relu
    h = act(x @ w_ih.T + b_ih + state @ w_hh.T + b_hh)
    return h, h


def _unrolled_logits(model, ids, state):
    """Logits of every position, computed one step and one layer at a time. ids: (B, T), state: (L, B, S)."""
    cell = model.config.cell
    states = list(state)
    outputs = []
    for t in range(ids.size(1)):
        x = model.embedding.weight[ids[:, t]]
        for index, layer in enumerate(model.layers):
            x, states[index] = _cell_step(cell, layer, x, states[index])
        outputs.append(model.decoder(x))
    logits = torch.stack(outputs, 1) if outputs else None
    return logits, torch.stack(states)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("k1, k2", [(6, 6), (3, 7), (2, 5)])
def test_tbptt_gradients_equal_an_explicit_unrolled_computation(cell, k1, k2):
    torch.manual_seed(1)
    model = make_model(cell)
    data = batchify(torch.randint(0, 50, (3 * 40,)), 3)  # (3, 40)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # gradients only; weights stay put
    windows = list(iterate_windows(data, 0, k1, k2))
    carried = model.init_state(3)
    for number, window in enumerate(windows[:4]):
        start_state = carried
        _, carried = train_step(model, optimizer, window, start_state, None, None)
        got = {name: p.grad.clone() for name, p in model.named_parameters()}

        # Independent computation: the state at the window's start by running
        # the stream from zero without gradients, then the unrolled window.
        with torch.no_grad():
            _, expected_start = _unrolled_logits(model, data[:, : window.start], model.init_state(3))
        torch.testing.assert_close(start_state, expected_start, rtol=1e-5, atol=1e-6)
        model.zero_grad()
        logits, _ = _unrolled_logits(model, window.inputs, expected_start)
        scored = logits[:, window.loss_from :]
        loss = F.cross_entropy(scored.reshape(-1, 50), window.targets[:, window.loss_from :].reshape(-1))
        loss.backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6, msg=f"{cell} window {number} {name}")


@pytest.mark.parametrize("k1, k2", [(5, 5), (3, 8), (1, 4)])
def test_windows_score_every_position_once_with_k2_of_context(k1, k2):
    data = batchify(torch.arange(2 * 30), 2)
    scored = []
    for window in iterate_windows(data, 0, k1, k2):
        assert window.inputs.size(1) <= k2
        position = window.start + window.loss_from
        assert window.loss_from == min(k2 - k1, position)  # k2 - k1 steps of recomputed context
        assert window.inputs.size(1) == window.loss_from + window.scored
        torch.testing.assert_close(window.targets, data[:, window.start + 1 : window.start + 1 + window.inputs.size(1)])
        scored.extend(range(window.start + window.loss_from, window.next_position))
    assert scored == list(range(29))


def test_variable_windows_keep_the_overlap_and_cover_the_stream():
    data = batchify(torch.arange(4 * 500), 4)
    rng = random.Random(0)
    windows = list(iterate_windows(data, 0, 20, 30, rng))
    lengths = {w.scored for w in windows[:-1]}
    assert len(lengths) > 5  # lengths vary
    assert all(w.loss_from == min(10, w.start + w.loss_from) for w in windows)
    assert windows[-1].next_position == 499


def test_carried_state_is_the_state_at_the_next_window_start_and_detached():
    model = make_model("gru")
    data = batchify(torch.randint(0, 50, (2 * 30,)), 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    state = model.init_state(2)
    windows = list(iterate_windows(data, 0, 4, 9))
    for window in windows[:4]:
        _, state = train_step(model, optimizer, window, state, None, None)
        assert state.grad_fn is None and not state.requires_grad
        prefix = window.start + window.carry_at
        model.eval()
        with torch.no_grad():
            expected = model(data[:, :prefix])[1] if prefix else model.init_state(2)
        model.train()
        torch.testing.assert_close(state, expected, rtol=1e-5, atol=1e-6)
    assert state.abs().sum() > 0


def _params_with_grads(values):
    params = [torch.nn.Parameter(torch.zeros(len(v))) for v in values]
    for p, v in zip(params, values):
        p.grad = torch.tensor(v, dtype=torch.float32)
    return params


def test_clip_by_norm_bounds_the_norm_and_returns_the_norm_before():
    params = _params_with_grads([[3.0, 4.0], [0.0, 12.0]])  # norm 13
    norm, clipped = clip_gradients(params, 1.0, None)
    assert norm == pytest.approx(13.0) and clipped
    after = math.sqrt(sum(float((p.grad**2).sum()) for p in params))
    assert after == pytest.approx(1.0, rel=1e-5)
    params = _params_with_grads([[0.3, 0.4]])
    norm, clipped = clip_gradients(params, 1.0, None)
    assert norm == pytest.approx(0.5) and not clipped
    assert params[0].grad.tolist() == pytest.approx([0.3, 0.4])


def test_clip_by_value_bounds_every_element():
    params = _params_with_grads([[3.0, -4.0, 0.1]])
    norm, clipped = clip_gradients(params, None, 0.5)
    assert clipped and norm == pytest.approx(math.sqrt(25.01))
    assert params[0].grad.tolist() == pytest.approx([0.5, -0.5, 0.1])


def test_non_finite_gradient_step_is_skipped_not_applied():
    model = make_model("lstm")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = batchify(torch.randint(0, 50, (2 * 20,)), 2)
    window = next(iterate_windows(data, 0, 5, 5))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    handle = model.decoder.weight.register_hook(lambda grad: grad * float("nan"))
    result, _ = train_step(model, optimizer, window, model.init_state(2), 1.0, None)
    handle.remove()
    assert result.skipped and not math.isfinite(result.grad_norm)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name])
    result, _ = train_step(model, optimizer, window, model.init_state(2), 1.0, None)
    assert not result.skipped
    assert not torch.equal(model.decoder.weight, before["decoder.weight"])


def _fit(tmp_path, model, config, hooks=None, data=None):
    data = data if data is not None else batchify(torch.randint(0, 50, (4 * 200,)), 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    state = fit(model, optimizer, data, config, TrainingState(), metrics, hooks or Hooks())
    metrics.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return state, records


def test_every_step_logs_the_norm_before_clipping_and_whether_it_clipped(tmp_path):
    config = TrainConfig(max_steps=30, max_minutes=None, clip_norm=0.05, bptt=8, lr=0.01, warmup_steps=0)
    state, records = _fit(tmp_path, make_model("rnn_tanh"), config)
    steps = [r for r in records if r["kind"] == "step"]
    assert len(steps) == 30 == state.step
    assert all(r["clipped"] == (r["grad_norm"] > 0.05) for r in steps)
    assert state.clipped_steps == sum(r["clipped"] for r in steps) > 0


def test_auto_clip_threshold_is_the_mean_norm_of_the_first_steps(tmp_path):
    config = TrainConfig(max_steps=20, max_minutes=None, clip_norm="auto", clip_auto_steps=10, bptt=8, warmup_steps=0)
    state, records = _fit(tmp_path, make_model("lstm"), config)
    norms = [r["grad_norm"] for r in records if r["kind"] == "step"][:10]
    assert state.clip_threshold == pytest.approx(sum(norms) / 10)
    assert [r["threshold"] for r in records if r["kind"] == "clip_auto"] == [pytest.approx(state.clip_threshold)]
    assert not any(r["clipped"] for r in records if r["kind"] == "step" and r["step"] <= 10)


def test_exploding_validation_rolls_back_with_a_lower_learning_rate(tmp_path):
    losses = iter([3.0, 2.5, 40.0, 2.4, 2.3, 2.2])
    saved, restored = [], []

    def evaluate():
        return EvalResult(nll=next(losses) * 100, units=100, chars=300, words=50)

    def restore_best():
        restored.append(True)
        return True

    config = TrainConfig(max_steps=60, max_minutes=None, eval_interval=10, bptt=8, warmup_steps=0, schedule="constant")
    hooks = Hooks(evaluate=evaluate, save=saved.append, restore_best=restore_best)
    state, records = _fit(tmp_path, make_model("gru"), config, hooks)
    assert restored == [True] and state.rollbacks == 1
    assert state.lr_scale == pytest.approx(1 / config.anneal_factor)
    assert [r for r in records if r["kind"] == "rollback"][0]["valid_loss"] == 40.0
    assert "best" in saved and "last" in saved


def test_plateau_schedule_divides_the_learning_rate_on_a_stall(tmp_path):
    losses = iter([3.0, 3.1, 3.2, 2.0])
    config = TrainConfig(max_steps=40, max_minutes=None, eval_interval=10, bptt=8, warmup_steps=0, schedule="plateau",
                         optimizer="sgd", lr=1.0, anneal_factor=4.0)
    hooks = Hooks(evaluate=lambda: EvalResult(nll=next(losses), units=1, chars=1, words=1))
    state, records = _fit(tmp_path, make_model("gru"), config, hooks)
    lrs = {r["step"]: r["lr"] for r in records if r["kind"] == "step"}
    assert [lrs[5], lrs[15], lrs[25], lrs[35]] == pytest.approx([1.0, 1.0, 0.25, 0.0625])


def test_stop_request_ends_after_the_current_step_and_saves(tmp_path):
    saved = []
    config = TrainConfig(max_steps=1000, max_minutes=None, bptt=8)
    stop_after = iter(range(10**6))
    hooks = Hooks(save=saved.append, should_stop=lambda: next(stop_after) > 12)
    state, _ = _fit(tmp_path, make_model("gru"), config, hooks)
    assert 0 < state.step < 20 and saved == ["last"]


def test_epochs_reset_the_stream_and_the_state(tmp_path):
    config = TrainConfig(epochs=2, max_minutes=None, bptt=10, eval_interval=10**6)
    data = batchify(torch.randint(0, 50, (4 * 51,)), 4)  # 50 scored positions: 5 windows per epoch
    state, records = _fit(tmp_path, make_model("gru"), config, data=data)
    assert state.step == 10
    assert [r["epoch"] for r in records if r["kind"] == "step"] == [0] * 5 + [1] * 5


def test_a_time_budgets_schedule_is_planned_in_updates_so_a_resumed_run_repeats_itself(tmp_path):
    """Under --max-minutes the cosine schedule follows updates planned from the measured pace, not the clock: two
    resumes of one checkpoint take the same learning rates, and a changed time budget plans again."""
    config = TrainConfig(max_minutes=10.0, max_steps=None, bptt=8, warmup_steps=5, schedule="cosine", eval_interval=10**6)
    data = batchify(torch.randint(0, 50, (4 * 600,), generator=torch.Generator().manual_seed(0)), 4)
    model = make_model("gru")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    calls = iter(range(10**6))
    with MetricsLog(tmp_path / "first.jsonl") as metrics:
        state = fit(model, optimizer, data, config, TrainingState(), metrics, Hooks(should_stop=lambda: next(calls) >= 30))
    assert state.stopped and state.step == 30
    assert state.planned_minutes == 10.0 and state.planned_steps > 30  # planned after 20 updates, stored in the state
    first = [json.loads(line) for line in (tmp_path / "first.jsonl").read_text().splitlines()]
    assert [r["step"] for r in first if r["kind"] == "plan"] == [20]
    snapshot = copy.deepcopy((model.state_dict(), optimizer.state_dict(), state))

    def resume(name: str, minutes: float) -> tuple[list[dict], TrainingState]:
        resumed = make_model("gru")
        resumed.load_state_dict(snapshot[0])
        resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=config.lr)
        resumed_optimizer.load_state_dict(copy.deepcopy(snapshot[1]))  # load_state_dict keeps the tensors it is given
        resumed_state = replace(copy.deepcopy(snapshot[2]), stopped=False)
        more = iter(range(10**6))
        with MetricsLog(tmp_path / f"{name}.jsonl") as log:
            done = fit(resumed, resumed_optimizer, data, replace(config, max_minutes=minutes), resumed_state, log,
                       Hooks(should_stop=lambda: next(more) >= 25))
        return [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()], done

    (a, _), (b, _) = resume("a", 10.0), resume("b", 10.0)
    steps_a, steps_b = ([r for r in records if r["kind"] == "step"] for records in (a, b))
    assert len(steps_a) == 25 and [r["lr"] for r in steps_a] == [r["lr"] for r in steps_b]  # identical, not close
    assert [r["loss"] for r in steps_a] == [r["loss"] for r in steps_b]
    planned = snapshot[2].planned_steps
    for record in steps_a:  # the lr of update s is the cosine at (s - 1) / planned updates
        expected = learning_rate(config, TrainingState(step=record["step"] - 1), (record["step"] - 1) / planned)
        assert record["lr"] == pytest.approx(expected, rel=1e-12)
    longer, state_c = resume("c", 20.0)  # a changed time budget: planned again from where the run stands
    replans = [r for r in longer if r["kind"] == "plan"]
    assert len(replans) == 1 and replans[0]["replanned"] and replans[0]["step"] == 30
    assert state_c.planned_minutes == 20.0 and state_c.planned_steps > planned


def _scaled_step(scaler):
    """One train_step of a seeded LSTM with `scaler` (None: plain fp32); returns the result and the new weights."""
    model = make_model("lstm", seed=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    torch.manual_seed(4)
    window = next(iterate_windows(batchify(torch.randint(0, 50, (2 * 20,)), 2), 0, 6, 6))
    result, _ = train_step(model, optimizer, window, model.init_state(2), 0.05, None, scaler=scaler)
    return result, {name: p.detach().clone() for name, p in model.named_parameters()}


def test_a_scaled_loss_is_clipped_and_logged_on_unscaled_gradients():
    """fp16's gradient scaler multiplies the loss by 2**16; the clipping threshold and the logged norm must not see it."""
    plain, plain_weights = _scaled_step(None)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaled, scaled_weights = _scaled_step(scaler)
    assert plain.clipped and scaled.clipped and not scaled.skipped
    assert scaled.grad_norm == pytest.approx(plain.grad_norm, rel=1e-5)  # not 65536 times it
    for name, weight in plain_weights.items():
        torch.testing.assert_close(scaled_weights[name], weight, rtol=1e-5, atol=1e-6, msg=name)


def test_a_step_whose_scaled_gradients_overflow_is_skipped_and_the_scale_backs_off():
    scaler = torch.amp.GradScaler("cpu", init_scale=1e38)  # a gradient element above ~3.4 overflows float32 once scaled
    model = make_model("lstm", seed=3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    window = next(iterate_windows(batchify(torch.randint(0, 50, (2 * 20,)), 2), 0, 6, 6))
    handle = model.decoder.weight.register_hook(lambda grad: grad * 1e4)  # the scaled gradient overflows, as in fp16
    result, _ = train_step(model, optimizer, window, model.init_state(2), 1.0, None, scaler=scaler)
    handle.remove()
    assert result.skipped and not math.isfinite(result.grad_norm)
    assert scaler.get_scale() < 1e38
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_training_runs_on_the_cpu_and_learns(tmp_path, precision):
    """The autocast paths CPU torch has: bf16, and fp16 with a gradient scaler whose state is kept for resume."""
    config = TrainConfig(max_steps=30, max_minutes=None, bptt=8, lr=0.01, warmup_steps=0, precision=precision)
    state, records = _fit(tmp_path, make_model("lstm", weight_dropout=0.3, dropout=0.2), config)
    losses = [r["loss"] for r in records if r["kind"] == "step"]
    assert len(losses) == 30 and all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert state.carried.dtype == torch.float32  # the carried state stays float32 whatever the forward ran in
    assert (state.grad_scaler is not None) == (precision == "fp16")
    if precision == "fp16":
        assert state.grad_scaler["scale"] > 0 and json.dumps(state.to_json())  # JSON-ready for training.json


def test_device_and_precision_settings_are_checked():
    assert TrainConfig(device="cuda:1", precision="bf16").device == "cuda:1"
    for settings, message in [({"device": "gpu"}, "device must be one of auto, cpu, cuda, cuda:N, mps, not 'gpu'"),
                              ({"device": "cuda:x"}, "not 'cuda:x'"),
                              ({"precision": "fp8"}, "precision must be one of fp32, bf16, fp16, not 'fp8'")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**settings)


def test_last_is_saved_on_the_clock_whatever_the_eval_interval(tmp_path):
    """--checkpoint-minutes: without an evaluation in sight, "last" is saved as soon as that much training time has
    passed since the previous save, and only then; 0 saves only at the end."""
    saved = []
    config = TrainConfig(max_steps=80, max_minutes=None, bptt=8, eval_interval=10**6, checkpoint_minutes=0.0002)  # 12 ms
    state, records = _fit(tmp_path, make_model("gru"), config, Hooks(save=saved.append))
    elapsed = {r["step"]: r["elapsed"] for r in records if r["kind"] == "step"}
    timed = [r for r in records if r["kind"] == "checkpoint"]
    assert len(timed) >= 2 and all(r["reason"] == "clock" for r in timed)
    assert saved == ["last"] * (len(timed) + 1)  # the timed saves, then the one at the end
    previous = 0.0
    for record in timed:  # due after 12 ms of training since the previous save, and saved at the first step it was
        assert record["elapsed"] == elapsed[record["step"]] and record["elapsed"] - previous >= 0.012
        assert elapsed.get(record["step"] - 1, 0.0) - previous < 0.012
        previous = record["elapsed"]
    saved.clear()
    (tmp_path / "off").mkdir()
    _, records = _fit(tmp_path / "off", make_model("gru"), replace(config, checkpoint_minutes=0), Hooks(save=saved.append))
    assert saved == ["last"] and not [r for r in records if r["kind"] == "checkpoint"]


def test_checkpoint_minutes_must_not_be_negative():
    assert TrainConfig(checkpoint_minutes=0).checkpoint_minutes == 0
    with pytest.raises(ValueError, match="checkpoint_minutes must not be negative, not -1"):
        TrainConfig(checkpoint_minutes=-1)


def test_resuming_drops_the_later_steps_and_a_line_torn_by_a_crash(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "run", "step": 0}\n{"kind": "step", "step": 1}\n{"kind": "step", "step": 2}\n{"kind": "st')
    MetricsLog.truncate_after(path, 1)
    assert path.read_text() == '{"kind": "run", "step": 0}\n{"kind": "step", "step": 1}\n'
    assert "cut short by a crash" in caplog.text
