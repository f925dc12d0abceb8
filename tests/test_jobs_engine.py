"""jobs/engine.py: the training step and validation through the real engine on CPU: non-finite losses skip whole
windows, loss scaling, the stop flag agreed under DDP, batches that lost every image, and validation reads.

The fp16 paths run on CUDA in practice; the optimizer and scaler code is the same on CPU, so these tests exercise it
there with a CPU GradScaler. The DDP cases run tests/ddp_engine_worker.py under torchrun with two CPU processes.
"""

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_CFG, torchrun
from ddp_engine_worker import SIGNAL_AT
from timm.scheduler import StepLRScheduler
from torch.utils._python_dispatch import TorchDispatchMode

from jobs import engine
from jobs.results import ClassTally
from logger import MetricsWriter
from runtime import Runtime


class Scripted(torch.nn.Module):
    """A linear classifier whose loss (forward) or gradient (backward) is non-finite on the listed calls."""

    def __init__(self, nan_outputs: set = frozenset(), inf_grads: set = frozenset()) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)
        self.nan_outputs, self.inf_grads = nan_outputs, inf_grads
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.linear(x)
        if self.calls in self.inf_grads:
            out.register_hook(lambda grad: grad * float("inf"))
        return out * float("nan") if self.calls in self.nan_outputs else out


def context(model: torch.nn.Module, optimizer: torch.optim.Optimizer, accumulation: int = 1,
            fp16_scaler: bool = False, ema: bool = False, max_nonfinite: int = 5) -> engine.TrainContext:
    rt = Runtime(torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=fp16_scaler, init_scale=2.0**10)
    ctx = engine.TrainContext(model=model, criterion=torch.nn.CrossEntropyLoss(), optimizer=optimizer,
                              scheduler=StepLRScheduler(optimizer, decay_t=100, t_in_epochs=False), scaler=scaler,
                              rt=rt, logger=logging.getLogger("test"), accumulation_steps=accumulation,
                              max_nonfinite=max_nonfinite)
    if ema:
        ctx.ema = engine.ModelEma(model, 0.5)
    return ctx


def batches(count: int) -> list:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 4, generator=generator), torch.tensor([0, 1, 2, 0])) for _ in range(count)]


def test_a_non_finite_loss_early_in_an_accumulation_window_skips_the_whole_window():
    model = Scripted(nan_outputs={1})
    ctx = context(model, torch.optim.SGD(model.parameters(), lr=0.1), accumulation=2, ema=True)
    before = model.linear.weight.detach().clone()
    stats = engine.train_one_epoch(ctx, batches(2), epoch=0)
    assert stats["skipped_steps"] == 1.0
    assert torch.equal(model.linear.weight, before) and torch.equal(ctx.ema.module.linear.weight, before)
    with torch.no_grad():
        finite_loss = torch.nn.functional.cross_entropy(Scripted().linear(batches(2)[1][0]), batches(2)[1][1])
    assert stats["train_loss"] == float(finite_loss)  # the finite batch only


def test_fused_sgd_with_a_loss_scaler_skips_an_overflowing_first_step_cleanly():
    """An fp16 overflow on the first step must leave no uninitialised momentum behind."""
    model = Scripted(inf_grads={1})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, fused=True)
    ctx = context(model, optimizer, fp16_scaler=True)
    before = model.linear.weight.detach().clone()
    data = batches(2)
    stats = engine.train_one_epoch(ctx, data, epoch=0)
    assert stats["skipped_steps"] == 1.0 and ctx.scaler.get_scale() == 2.0**9
    reference = Scripted()
    reference.linear.weight.data.copy_(before)
    plain = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    torch.nn.functional.cross_entropy(reference(data[1][0]), data[1][1]).backward()
    plain.step()
    torch.testing.assert_close(model.linear.weight, reference.linear.weight)


def test_skipped_steps_keep_epoch_figures_finite_and_metrics_strict_json(tmp_path):
    model = Scripted(nan_outputs={2})
    ctx = context(model, torch.optim.SGD(model.parameters(), lr=0.1))
    stats = engine.train_one_epoch(ctx, batches(3), epoch=0)
    assert all(value == value and abs(value) != float("inf") for value in stats.values())
    writer = MetricsWriter(str(tmp_path), enabled=True)
    writer.epoch({"epoch": 0, **stats, "val_loss": float("inf"), "val_top1": float("nan")})
    writer.close()
    line = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=lambda c: 1 / 0)
    assert line["val_loss"] is None and line["val_top1"] is None and line["train_loss"] == stats["train_loss"]


def test_a_resumed_epoch_reports_the_whole_epoch():
    data = batches(4)
    whole = engine.train_one_epoch(_ctx(), data, epoch=0)
    first = _ctx()
    engine.train_one_epoch(first, data[:2], epoch=0)
    second = _ctx(first.model)
    resumed = engine.train_one_epoch(second, data[2:], epoch=0, start_batch=2, totals=dict(first.totals))
    for key in ("train_loss", "grad_norm", "skipped_steps"):
        assert resumed[key] == whole[key], key


def _ctx(model: torch.nn.Module = None) -> engine.TrainContext:
    model = model or Scripted()
    return context(model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_steps_that_do_not_log_never_wait_for_the_device_and_still_skip_non_finite_updates(monkeypatch):
    """Fused AdamW without a loss scaler (the bf16 / fp32 GPU path): the loss, the gradient norm and the choice to
    skip a non-finite update stay on the device; the host reads them only at the two logging steps and the end."""
    model = Scripted(nan_outputs={3})
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    ctx = context(model, optimizer)
    ctx.print_freq, ctx.ema = 100, engine.ModelEma(model, 0.5)
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _f=original, _n=name: reads.append(_n) or _f(self, *a))
    stats = engine.train_one_epoch(ctx, batches(8), epoch=0)
    monkeypatch.undo()
    assert reads == ["tolist"] * 3, reads  # index 0 and index 7 log; the epoch's end flushes
    assert stats["skipped_steps"] == 1.0 and torch.isfinite(model.linear.weight).all()
    assert int(optimizer.state[model.linear.weight]["step"]) == 7  # the skipped update did not count
    assert torch.isfinite(ctx.ema.module.linear.weight).all()


def test_under_ddp_a_stop_signal_agreed_at_one_window_end_stops_at_the_next_without_a_logging_step(tmp_path):
    """The ranks agree on the signal in the window's collective and act on it one optimizer step later, whatever
    PRINT_FREQ is (here no batch but the first and last logs); a signal agreed at the epoch's last step is acted
    on once more after the epoch."""
    import signal

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = Scripted()
        ctx = context(model, torch.optim.SGD(model.parameters(), lr=0.1), accumulation=2)
        ctx.rt = Runtime(torch.device("cpu"), world_size=2)  # a process group of one that takes the DDP paths
        ctx.print_freq, ctx.stop_signal = 100, lambda: signal.SIGTERM if model.calls >= 3 else 0
        calls = []
        ctx.step_hook = lambda epoch, done, signum: calls.append((done, signum))
        engine.train_one_epoch(ctx, batches(8), epoch=0)
    finally:
        dist.destroy_process_group()
    # The signal comes during the second window (batch 3), is agreed at its end and acted on at the third's.
    assert calls[:3] == [(2, 0), (4, 0), (6, signal.SIGTERM)], calls
    assert calls[-2:] == [(8, signal.SIGTERM), (8, signal.SIGTERM)], calls  # the last window's, after the epoch


def test_a_batch_that_lost_every_image_still_goes_forward_and_backward_and_changes_nothing():
    """DATA.DECODE_ERRORS skip: a batch of no image (None) runs the blank batch through the model, so under DDP this
    rank joins the step's collectives, with zero gradient; a window of no image on any rank is no update at all."""
    data = batches(4)
    model = Scripted()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    ctx = context(model, optimizer, accumulation=2)
    ctx.blank_batch = (torch.zeros(1, 4), torch.zeros(1, dtype=torch.int64))
    stats = engine.train_one_epoch(ctx, [data[0], None, None, None, data[1], data[2]], epoch=0)
    assert model.calls == 6  # every batch went forward, the three without images as the blank one
    assert stats["skipped_steps"] == 0.0 and int(optimizer.state[model.linear.weight]["step"]) == 2
    reference = Scripted()  # the two windows' updates without the blank batches, whose gradient was zero
    plain = torch.optim.AdamW(reference.parameters(), lr=0.1, fused=True)
    for window in ((data[0],), (data[1], data[2])):
        for images, labels in window:
            (torch.nn.functional.cross_entropy(reference(images), labels) / 2).backward()
        plain.step()
        plain.zero_grad()
    torch.testing.assert_close(model.linear.weight, reference.linear.weight)


class NanLossValue(torch.nn.Module):
    """Cross-entropy whose value is NaN on the listed calls while its gradient stays finite (a NaN constant added)."""

    def __init__(self, nan_calls: set) -> None:
        super().__init__()
        self.nan_calls, self.calls = nan_calls, 0

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(logits, labels)
        return loss + float("nan") if self.calls in self.nan_calls else loss


@pytest.mark.parametrize("fused", [False, True])
def test_fp16_a_window_skipped_for_a_non_finite_loss_with_finite_gradients_changes_nothing(fused):
    """The loss scaler's step checks the gradients only; the window it is given here has finite ones and a NaN loss,
    so the engine calls it skipped, and the weights and the optimizer's state (step, moments) must show no step."""
    data = batches(2)
    model = Scripted()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused)
    ctx = context(model, optimizer, fp16_scaler=True)
    ctx.criterion = NanLossValue({1})
    stats = engine.train_one_epoch(ctx, data, epoch=0)
    assert stats["skipped_steps"] == 1.0
    reference = Scripted()  # the second batch's update alone
    plain = torch.optim.AdamW(reference.parameters(), lr=0.1, fused=fused)
    reference_ctx = context(reference, plain, fp16_scaler=True)
    engine.train_one_epoch(reference_ctx, data[1:], epoch=0, start_batch=1)
    for name, param in model.named_parameters():
        reference_param = dict(reference.named_parameters())[name]
        assert torch.equal(param, reference_param), name
        state, expected = optimizer.state[param], plain.state[reference_param]
        assert float(state["step"]) == float(expected["step"]) == 1.0, name
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[moment], expected[moment]), (name, moment)


class HostReads(TorchDispatchMode):
    """Records the operators that make the host wait for the device: reading a value (`item`, `bool`), copying host
    data to it (`torch.tensor`), and those whose output size depends on the data (bincount, nonzero, masking)."""

    WAITING = {"aten._local_scalar_dense", "aten.lift_fresh", "aten.bincount", "aten.nonzero", "aten.masked_select",
               "aten.unique", "aten._unique2"}

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func.overloadpacket._qualified_op_name.replace("::", ".")
        masked = name == "aten.index" and any(i is not None and i.dtype == torch.bool for i in args[1])
        if name in self.WAITING or masked:
            self.found.append(name)
        return func(*args, **(kwargs or {}))


def test_validation_keeps_each_batch_on_the_device_and_reads_its_sums_once(monkeypatch):
    """No batch of validate waits for the device (no value read, no host data copied in, no data-sized output):
    the figures and per-class counts are read once at the end, and equal those computed directly."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 7)
    generator = torch.Generator().manual_seed(2)
    data = [(torch.randn(5, 4, generator=generator), torch.randint(0, 7, (5,), generator=generator))
            for _ in range(6)]
    rt = Runtime(torch.device("cpu"))
    tally = ClassTally(7, rt.device)
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _f=original, _n=name: reads.append(_n) or _f(self, *a))
    with HostReads() as host:
        result = engine.validate(model, data, rt, tally)
    monkeypatch.undo()
    assert host.found == [] and reads == ["tolist"], (host.found, reads)
    images, labels = torch.cat([d[0] for d in data]), torch.cat([d[1] for d in data])
    with torch.no_grad():
        logits = model(images)
    top1 = logits.argmax(1)
    assert result["count"] == 30.0 and result["top1"] == 100.0 * (top1 == labels).sum().item() / 30
    assert result["top5"] == 100.0 * (logits.topk(5, 1).indices == labels[:, None]).sum().item() / 30
    assert abs(result["loss"] - torch.nn.functional.cross_entropy(logits, labels).item()) < 1e-6
    assert torch.equal(tally.count, torch.bincount(labels, minlength=7).double())
    assert torch.equal(tally.hits, torch.bincount(labels[top1 == labels], minlength=7).double())
    assert torch.equal(tally.confusion, torch.bincount(labels * 7 + top1, minlength=49).double())


def test_non_finite_loss_skips_the_step_and_keeps_the_weights():
    model = Scripted(nan_outputs={2})
    ctx = context(model, torch.optim.SGD(model.parameters(), lr=0.1), max_nonfinite=3)
    data = batches(3)
    engine.train_one_epoch(ctx, data[:1], epoch=0)
    before = ctx.model.linear.weight.detach().clone()
    stats = engine.train_one_epoch(ctx, data[1:2], epoch=0, start_batch=1)
    assert stats["skipped_steps"] == 1.0 and torch.equal(ctx.model.linear.weight, before)
    engine.train_one_epoch(ctx, data[2:], epoch=0, start_batch=2)
    assert not torch.equal(ctx.model.linear.weight, before) and torch.isfinite(ctx.model.linear.weight).all()


def test_too_many_non_finite_losses_stop_with_one_line_naming_the_step():
    model = Scripted(nan_outputs={1, 2, 3})
    ctx = context(model, torch.optim.SGD(model.parameters(), lr=0.1), max_nonfinite=3)
    with pytest.raises(engine.DivergedError, match=r"non-finite for 3 steps in a row up to epoch 4 step 2"):
        engine.train_one_epoch(ctx, batches(5), epoch=4)


WORKER = os.path.join(ROOT, "tests", "ddp_engine_worker.py")


def run_worker(tmp_path, mode: str) -> subprocess.CompletedProcess:
    """The DDP worker script (main.py with a scripted loader) under torchrun in `mode`, with the tiny config for
    one epoch. After 180 s (a healthy run takes about 10) the job is killed, ranks included (torchrun starts each in
    a session of its own): a rank left waiting in a collective would hang otherwise."""
    command = [sys.executable, *torchrun(), WORKER, mode, str(tmp_path), "--cfg", TINY_CFG, "--output",
               str(tmp_path / "out"), "--opts", "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0", "PRINT_FREQ", "1000"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        stdout, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        for pid_file in tmp_path.glob("rank*.pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        process.kill()
        raise AssertionError(f"the ranks hung: {process.communicate()[1][-2000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_a_rank_whose_batches_lost_every_image_keeps_step_with_the_other(tmp_path):
    """Rank 1 has no image in its first and third batches, neither rank in the fifth: the run ends, and both ranks
    hold the same weights and made the same five updates (the fifth batch's window, empty everywhere, is none)."""
    result = run_worker(tmp_path, "undecodable")
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pth", weights_only=True) for rank in (0, 1)]
    different = [k for k in ranks[0]["model"] if not torch.equal(ranks[0]["model"][k], ranks[1]["model"][k])]
    assert not different, different[:3]
    assert ranks[0]["steps"] == ranks[1]["steps"] == [5], (ranks[0]["steps"], ranks[1]["steps"])


def test_sigterm_under_ddp_saves_within_two_steps_whatever_print_freq(tmp_path):
    """Only rank 0 gets the signal, with no logging step before the epoch's end: the ranks agree on it in the
    window's collective and save at the step after next (the signal came before batch 5: step 7), then stop."""
    result = run_worker(tmp_path, "sigterm")
    codes = [int((tmp_path / f"rank{rank}.code").read_text()) for rank in (0, 1)]
    assert codes == [128 + signal.SIGTERM] * 2, (codes, result.stderr[-3000:])
    folder = tmp_path / "out" / "swin_tiny_test" / "default"
    saved = sorted(name for name in os.listdir(folder) if re.match(r"ckpt_epoch_\d+_step_\d+\.pth", name))
    assert saved == [f"ckpt_epoch_0_step_{SIGNAL_AT + 2}.pth"], saved
    assert re.search(r"interrupted: stopped by SIGTERM; saved .*ckpt_epoch_0_step_7\.pth", result.stderr)
