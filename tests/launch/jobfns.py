"""Functions the launch tests run as jobs. conftest registers this module with cloudpickle to be pickled by value,
so jobs need not import the tests package; what they import from gemctl comes from the job's code snapshot."""

import os
import time
from pathlib import Path


def add(a: int, b: int) -> dict:
    return {"sum": a + b}


def fail(msg: str) -> None:
    print("about to fail", flush=True)
    raise ValueError(msg)


BOUND_S = 600  # what jobs waiting on a test's condition wait at most: only guards against a hung test


def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.05)


def block(go_file: str, heed_signal: bool = True) -> str | dict:
    """Say "blocked", then wait for go_file (a test that never creates it cancels the job) or, with heed_signal,
    stop on the preemption signal (as a training loop would, without a checkpoint to take)."""
    from gemctl.launch import preemption

    def stop() -> bool:
        return heed_signal and preemption.should_stop()

    print("blocked", flush=True)
    _wait(lambda: Path(go_file).exists() or stop(), go_file)
    return {"status": "preempted"} if stop() else "released"


def pause_for_signal(step: int) -> None:
    """Say "at step <step>" and wait until this process got the timeout/preemption signal: a test sends the
    signal when it reads the line, so the job stops at exactly this step. Only on the job's first run."""
    from gemctl.launch import preemption

    if preemption.restarts() == 0:
        print(f"at step {step}", flush=True)
        _wait(preemption.should_stop, "the preemption signal")


def array_point(x: int) -> dict:
    return {"x": x, "square": x * x, "array_task": os.environ.get("SLURM_ARRAY_TASK_ID")}


def snapshot_probe(pkg: str, go_file: str) -> dict:
    """Wait until the test has edited the working tree, then import: must still see the submitted code."""
    _wait(Path(go_file).exists, go_file)
    import importlib

    import gem_stages
    import gemctl

    mod = importlib.import_module(pkg)
    return {"value": mod.VALUE, "pkg_file": mod.__file__, "gemctl": gemctl.__file__, "gem_stages": gem_stages.__file__}


def snapshot_requeue_probe(pkg: str) -> dict:
    """First run: import pkg, stop at "step 0" on the preemption signal and be requeued; the requeued run
    imports pkg again, in a fresh process, and returns what it saw."""
    import importlib

    from gemctl.launch import preemption

    mod = importlib.import_module(pkg)
    if preemption.restarts() == 0:
        print(f"first run sees VALUE={mod.VALUE}", flush=True)
        pause_for_signal(0)
        return {"status": "preempted"}
    return {"value": mod.VALUE, "pkg_file": mod.__file__, "restarts": preemption.restarts()}


def train(ckpt_dir: str, steps: int = 30, pause_at: int | None = None) -> dict:
    """A small deterministic training loop (DDP over gloo when the job has several ranks) that checkpoints on
    should_stop and resumes from its checkpoint: an interrupted run must end exactly like an uninterrupted one.
    pause_at: on the first run, wait at that step until the preemption signal came (pause_for_signal)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from gemctl.launch import distributed, preemption

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group(distributed.backend())
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ckpt = Path(ckpt_dir) / "ckpt.pt"
    start, losses, resumed_at = 0, [], []
    if ckpt.exists():
        st = torch.load(ckpt)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        start, losses, resumed_at = st["step"], st["losses"], st["resumed_at"] + [st["step"]]
        print(f"resumed at step {start}", flush=True)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(64, 4, generator=gen)
    Y = X.sum(1, keepdim=True).sin()
    for step in range(start, steps):
        if step == pause_at:
            pause_for_signal(step)
        if preemption.should_stop_all():
            if rank == 0:
                tmp = ckpt.with_suffix(".tmp")
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "losses": losses,
                            "resumed_at": resumed_at}, tmp)
                tmp.replace(ckpt)
            print(f"checkpointed at step {step}", flush=True)
            if world > 1:
                dist.barrier()  # nobody leaves before the checkpoint is on disk
                dist.destroy_process_group()
            return {"status": "preempted", "step": step}
        idx = torch.randperm(64, generator=torch.Generator().manual_seed(1000 + step))[:16]
        shard = idx[rank::world]
        loss = F.mse_loss(net(X[shard]), Y[shard])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        print(f"step {step} loss {loss.item():.6f}", flush=True)
    if world > 1:
        dist.destroy_process_group()
    return {"status": "done", "rank": rank, "world": world, "losses": losses, "resumed_at": resumed_at,
            "weights": {k: v.tolist() for k, v in model.state_dict().items()}}


def fail_on_rank(bad_rank: int, go_file: str) -> str:
    """One rank crashes while the others wait for a file that never comes (as if stuck in a collective)."""
    rank = int(os.environ.get("RANK", "0"))
    if rank == bad_rank:
        raise RuntimeError(f"rank {rank} crashed")
    _wait(Path(go_file).exists, go_file)
    return "survived"


def gem_trainer(work_dir: str, steps: int = 12, pause_at: int | None = None) -> dict:
    """gem_stages' own trainer (accelerate; DDP over gloo when the job has several ranks) on a small model, with
    the launcher's preemption flag: returns a digest of the final weights so ranks and runs can be compared.
    pause_at: on the first run, wait at that step boundary until the preemption signal came."""
    import hashlib

    import torch

    from gem_stages.config import LossWeights, RuntimeConfig, TrainStageConfig
    from gem_stages.trainer import train
    from gemctl.launch import preemption

    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=g))

        def forward(self, batch, weights, generator):
            x = batch["x"] + 0.1 * torch.randn(batch["x"].shape, generator=generator)
            depth = ((self.b(torch.tanh(self.a(x))).squeeze(-1) - batch["y"]) ** 2).mean()
            return {"loss": weights["depth"] * depth, "depth": depth.detach()}

    def collate(items):
        return {"x": torch.stack([i["x"] for i in items]), "y": torch.stack([i["y"] for i in items])}

    boundaries = iter(range(steps + 1))  # the trainer asks should_stop once per step boundary, from its start

    def should_stop() -> bool:
        if next(boundaries) == pause_at:
            pause_for_signal(pause_at)
        return preemption.should_stop()

    samples = [{"x": torch.randn(4, generator=torch.Generator().manual_seed(i)), "y": torch.tensor(float(i % 3))}
               for i in range(16)]
    model = Small()
    cfg = TrainStageConfig(trainable=["a", "b"], steps=steps, lr=1e-2, batch_size=2, warmup_ratio=0.0,
                           loss=LossWeights(depth=1.0))
    result = train(model, {"a": model.a, "b": model.b}, cfg, RuntimeConfig(device="cpu"), samples, collate, seed=0,
                   work_dir=Path(work_dir), should_stop=should_stop)
    digest = hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in model.state_dict().values()))
    return {"status": result.status, "step": result.step, "resumed_from": result.resumed_from,
            "weights": digest.hexdigest(), "rank": int(os.environ.get("RANK", "0"))}
