"""The trainer on a small stand-in model: schedule, accumulation, freezing, and exact resume."""

import math
from pathlib import Path

import pytest
import torch

from gem_stages.config import LossWeights, RuntimeConfig, TrainStageConfig
from gem_stages.errors import InputError
from gem_stages.tracker import ListTracker
from gem_stages.trainer import MicroBatches, lr_lambda, refuse_unsafe_pickles, step_seed, train


class Toy(torch.nn.Module):
    """Two parts ("connector", "depth_generator") and a loss that uses the step generator, like GemModel."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def groups(self):
        return {"connector": self.a, "depth_generator": self.b}

    def forward(self, batch, weights, generator):
        noise = torch.randn(batch["x"].shape, generator=generator)
        pred = self.b(torch.tanh(self.a(batch["x"] + 0.1 * noise)))
        depth = ((pred.squeeze(-1) - batch["y"]) ** 2).mean()
        return {"loss": weights["depth"] * depth, "depth": depth.detach()}


SAMPLES = [{"x": torch.randn(4, generator=torch.Generator().manual_seed(i)), "y": torch.tensor(float(i % 3))}
           for i in range(10)]


def collate(items):
    return {"x": torch.stack([s["x"] for s in items]), "y": torch.stack([s["y"] for s in items])}


def cfg(**kw):
    base = dict(trainable=["connector", "depth_generator"], steps=8, lr=1e-2, batch_size=3, grad_accum=2,
                warmup_ratio=0.25, loss=LossWeights(depth=1.0), log_every=1)
    base.update(kw)
    return TrainStageConfig(**base)


def run(tmp_path, config, stop_after=None, name="w"):
    model = Toy()
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return stop_after is not None and calls["n"] > stop_after

    tracker = ListTracker()
    result = train(model, model.groups(), config, RuntimeConfig(device="cpu"), SAMPLES, collate, seed=7,
                   work_dir=tmp_path / name, tracker=tracker, should_stop=should_stop)
    return model, result, tracker


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_exact_resume_matches_uninterrupted_run(tmp_path):
    ref, ref_result, _ = run(tmp_path, cfg(), name="ref")
    assert ref_result.status == "completed" and ref_result.step == 8

    _, first, _ = run(tmp_path, cfg(), stop_after=3, name="resumed")
    assert first.status == "preempted" and first.step == 3
    assert (tmp_path / "resumed" / "ckpt-00000003").is_dir()
    resumed, second, _ = run(tmp_path, cfg(), name="resumed")
    assert second.status == "completed" and second.resumed_from == 3 and second.step == 8
    for k, v in state(ref).items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_the_step_lives_in_the_checkpoint_and_leftovers_of_a_kill_are_ignored(tmp_path):
    _, first, _ = run(tmp_path, cfg(), stop_after=3)
    ckpt = tmp_path / "w" / "ckpt-00000003"
    assert first.step == 3 and not (ckpt / "trainer_state.json").exists()
    # what a SIGKILL can leave: a half-written newer checkpoint and a half-deleted older one
    for junk in ("ckpt-00000005.tmp", ".trash-ckpt-00000001"):
        (tmp_path / "w" / junk).mkdir()
        (tmp_path / "w" / junk / "model.safetensors").write_bytes(b"half")
    _, second, _ = run(tmp_path, cfg())
    assert second.resumed_from == 3 and second.step == 8
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["ckpt-00000003"]


def test_a_data_shard_trains_its_slice_of_each_global_batch():
    data = list(range(12))
    # shard r of 2 at micro-step m trains global micro-batch 2m + r: what one process sees at micro-steps 2m, 2m+1
    one = MicroBatches(data, list, batch_size=2, seed=4)
    shards = [MicroBatches(data, list, batch_size=2, seed=4, rank=r, world_size=2) for r in (0, 1)]
    for m in range(5):
        assert shards[0].indices(m) == one.indices(2 * m) and shards[1].indices(m) == one.indices(2 * m + 1)


def test_periodic_checkpoints_keep_the_newest(tmp_path):
    run(tmp_path, cfg(checkpoint_every=2, keep_checkpoints=2))
    names = sorted(p.name for p in (tmp_path / "w").iterdir())
    assert names == ["ckpt-00000004", "ckpt-00000006"]


def test_frozen_groups_do_not_change(tmp_path):
    model = Toy()
    before = state(model)
    train(model, model.groups(), cfg(trainable=["depth_generator"]), RuntimeConfig(device="cpu"), SAMPLES, collate,
          seed=0, work_dir=tmp_path / "w")
    after = model.state_dict()
    assert torch.equal(before["a.weight"], after["a.weight"]) and torch.equal(before["a.bias"], after["a.bias"])
    assert not torch.equal(before["b.weight"], after["b.weight"])


def test_unknown_group_is_refused(tmp_path):
    model = Toy()
    with pytest.raises(ValueError, match="no such part"):
        train(model, model.groups(), cfg(trainable=["action_expert"]), RuntimeConfig(device="cpu"), SAMPLES,
              collate, seed=0, work_dir=tmp_path / "w")


def test_loss_decreases_and_is_logged_every_step(tmp_path):
    _, result, tracker = run(tmp_path, cfg(steps=30, warmup_ratio=0.0, schedule="constant"))
    steps = [s for s, _ in tracker.points]
    assert steps == list(range(1, 31))
    first, last = tracker.points[0][1]["depth"], tracker.points[-1][1]["depth"]
    assert last < 0.5 * first
    assert set(result.losses) == {"loss", "depth"}
    # 20 micro-batches = the last 10 steps of 2 (grad_accum)
    assert result.losses["depth"] == pytest.approx(sum(p[1]["depth"] for p in tracker.points[-10:]) / 10)


def test_losses_are_read_from_the_device_only_on_log_steps(tmp_path, monkeypatch):
    """A host read of a tensor waits for the device: outside torch itself, the trainer makes one per log step."""
    import sys

    reads = []
    for name in ("__float__", "item", "tolist"):
        def counted(self, *a, _original=getattr(torch.Tensor, name), _name=name, **kw):
            if not sys._getframe(1).f_globals.get("__name__", "").startswith("torch"):  # AdamW reads its step
                reads.append((_name, sys._getframe(1).f_code.co_name))
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    _, result, tracker = run(tmp_path, cfg(steps=8, grad_accum=2, log_every=4))
    monkeypatch.undo()
    assert [s for s, _ in tracker.points] == [4, 8]
    # one copy per log step and one for the final losses, none per micro-batch (the data order is drawn on the CPU)
    assert [r for r in reads if r[1] != "indices"] == [("tolist", "_means")] * 3
    assert set(result.losses) == {"loss", "depth"}


def test_schedule_shapes():
    f = lr_lambda("cosine", warmup=2, total=10)
    assert [round(f(s), 4) for s in (0, 1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0) and f(6) == pytest.approx(0.5) and f(10) == pytest.approx(0.0)
    assert lr_lambda("linear", 0, 4)(2) == pytest.approx(0.5)
    assert lr_lambda("constant", 1, 4)(3) == 1.0
    assert math.isclose(lr_lambda("cosine", 0, 4)(1), 0.5 * (1 + math.cos(math.pi / 4)))


def test_micro_batches_cover_each_epoch_once_and_shard_by_rank():
    data = list(range(12))
    one = MicroBatches(data, list, batch_size=3, seed=1)
    epoch = [i for m in range(4) for i in one.indices(m)]
    assert sorted(epoch) == data  # 4 micro-batches of 3 = one epoch, each sample once
    r0 = MicroBatches(data, list, batch_size=3, seed=1, rank=0, world_size=2)
    r1 = MicroBatches(data, list, batch_size=3, seed=1, rank=1, world_size=2)
    sharded = [i for m in range(2) for i in r0.indices(m) + r1.indices(m)]
    assert sorted(sharded) == data
    assert MicroBatches(data, list, 3, seed=1).indices(5) == one.indices(5)  # pure function of (seed, m)


def test_step_seed_is_stable_and_distinct():
    assert step_seed(0, 3, 1, 0) == step_seed(0, 3, 1, 0)
    assert len({step_seed(0, 3, s, m) for s in range(50) for m in range(4)}) == 200


def test_epochs_set_the_step_count(tmp_path):
    from gem_stages.trainer import total_steps

    assert total_steps(cfg(epochs=None), 10, 1) == 8
    assert total_steps(cfg(epochs=1.0), 10, 1) == 2  # 10 samples / (3 per micro-batch x 2 accumulated) -> 2
    assert total_steps(cfg(epochs=3.0), 10, 2) == 3
    _, result, tracker = run(tmp_path, cfg(epochs=2.0))
    assert result.step == 4 and [s for s, _ in tracker.points] == [1, 2, 3, 4]


class SometimesNothingToLearn(Toy):
    """Like GemModel with a depth weight and a batch without depth targets: {"loss": a zero} and no part."""

    def forward(self, batch, weights, generator):
        if not bool(batch["has_target"].any()):
            return {"loss": sum(p.sum() * 0.0 for p in self.parameters())}
        out = super().forward(batch, weights, generator)
        return {**out, "loss": out["loss"] + 100.0}  # a total unlike any zero, to see which micro-batches count


def test_a_micro_batch_with_nothing_to_learn_is_not_logged_as_a_zero_loss(tmp_path):
    # one sample per micro-batch, two micro-batches per step; samples 0-4 have a target, 5-9 do not
    samples = [{**s, "has_target": torch.tensor(i < 5)} for i, s in enumerate(SAMPLES)]

    def collate_flag(items):
        return {**collate(items), "has_target": torch.stack([s["has_target"] for s in items])}

    model, tracker = SometimesNothingToLearn(), ListTracker()
    result = train(model, model.groups(), cfg(batch_size=1, steps=10, warmup_ratio=0.0), RuntimeConfig(device="cpu"),
                   samples, collate_flag, seed=7, work_dir=tmp_path / "w", tracker=tracker)
    assert result.step == 10
    keys = [set(m) for _, m in tracker.points]
    assert {"lr"} in keys and {"lr", "loss", "depth"} in keys  # steps with no target at all log no loss
    assert all(m["loss"] > 100.0 for _, m in tracker.points if "loss" in m)  # zeros never pull a mean down
    assert result.losses["loss"] > 100.0
    assert result.losses["loss"] == pytest.approx(100.0 + result.losses["depth"])


class _Planted:
    """What a malicious pickle does: names a callable the unpickler would call (here one that leaves a mark)."""

    def __init__(self, mark):
        self.mark = mark

    def __reduce__(self):
        return (Path.touch, (Path(self.mark),))


def test_a_planted_pickle_in_a_resume_checkpoint_is_refused_and_never_run(tmp_path):
    _, first, _ = run(tmp_path, cfg(), stop_after=3)
    ckpt = tmp_path / "w" / "ckpt-00000003"
    # every pickle this trainer writes passes the weights-only check (else resume would refuse our own files)
    refuse_unsafe_pickles(ckpt)
    mark = tmp_path / "pwned"
    import pickle

    state_file = ckpt / "custom_checkpoint_1.pkl"
    state_file.write_bytes(pickle.dumps({"step": 3, "x": _Planted(mark)}))
    with pytest.raises(InputError, match=r"custom_checkpoint_1.pkl: refused to load this resume checkpoint.*delete"):
        run(tmp_path, cfg())
    assert not mark.exists()  # the planted callable never ran
    # torch.save'd tensors of a planted kind (a torch.load of an arbitrary object) are refused the same way
    torch.save({"obj": _Planted(mark)}, state_file)
    with pytest.raises(InputError, match="refused to load"):
        refuse_unsafe_pickles(ckpt)
    assert not mark.exists()
