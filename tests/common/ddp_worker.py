"""What ``tests/common/test_distributed.py`` starts under ``torchrun`` (and once as a plain process to compare).

    python tests/common/ddp_worker.py MODE DATA OUT DUMP [--set KEY=VALUE ...]

MODE ``part`` trains the QC part classifier (``train_part_run``), ``med`` the 3D CNN (``medical3d.train.train``),
both with their tiny configs, into run directory OUT; ``engine`` runs ``common.engine.fit`` on a toy net with
BatchNorm: two stages, then a resume, then a deadline that only rank 1 has passed (DATA unused). Test-only hooks,
none in the product:
- on every rank but 0 an audit hook makes any write into OUT (and into the medical preprocessing cache, which
  rank 0 fills) fail: open for writing, mkdir, rename, remove, copy; a rank that writes there crashes the job;
- ``fit``, as the training module calls it, is wrapped: each rank saves the parameters it trained (before ``fit``
  reloads the best epoch, DDP's doing) and the parameters and buffers it returns with to DUMP/rank<r>.pt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.common.toys

from common import distributed

WRITE_EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.truncate",
                "shutil.copyfile", "shutil.copytree", "shutil.rmtree", "shutil.move", "os.chmod", "os.utime"}


def forbid_writes_under(*roots: Path) -> None:
    """Fail every write into ``roots`` by this process (for ranks other than 0)."""
    texts = [str(Path(r).resolve()) for r in roots]

    def inside(path) -> bool:
        if isinstance(path, int) or path is None:
            return False
        full = os.path.abspath(os.fsdecode(path))
        return any(full == t or full.startswith(t + os.sep) for t in texts)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or \
                (mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            paths = [path] if writing else []
        elif event in WRITE_EVENTS:
            paths = [a for a in args[:2] if isinstance(a, str | bytes | os.PathLike)]
        else:
            return
        for p in paths:
            if inside(p):
                raise PermissionError(f"rank {distributed.rank()} wrote into the run directory: {event} {p}")

    sys.addaudithook(hook)


def dump_fit(module, dump: Path) -> None:
    """Wrap ``module.fit`` (the real one runs) to save what each rank holds after training (DUMP/rank<r>.pt; with
    several ``fit`` calls, rank<r>-<call>.pt after the first)."""
    import common.engine as engine

    real_fit, real_finish = module.fit, engine._finish
    trained: dict = {}
    calls = [0]

    def finish(run, tracker, stopped):
        trained.update({k: v.detach().cpu().clone() for k, v in run.model.named_parameters()})
        return real_finish(run, tracker, stopped)

    def fit(model, *args, **kwargs):
        res = real_fit(model, *args, **kwargs)
        dump.mkdir(parents=True, exist_ok=True)
        name = f"rank{distributed.rank()}" + (f"-{calls[0]}" if calls[0] else "")
        calls[0] += 1
        torch.save({"trained": dict(trained), "final": {k: v.detach().cpu().clone() for k, v in
                                                        model.state_dict().items()},
                    "history": res.history, "stopped": res.stopped_reason, "best_epoch": res.best_epoch,
                    "has_logits": res.val_logits is not None}, dump / f"{name}.pt")
        return res

    engine._finish = finish
    module.fit = fit


def toy_fits(out: Path) -> None:
    """``fit`` on a toy net with BatchNorm under the conditions the callers' tiny runs do not reach: staged
    unfreezing (DDP wraps each stage anew), a resume from ``last.pt`` and a deadline passed by rank 1 alone."""
    import time

    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import common.engine as engine
    from common.config import StageConfig
    from tests.common.toys import blobs, train_config

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))

    x, y = blobs(96, seed=0)
    gen = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=gen, drop_last=True)
    val = DataLoader(TensorDataset(*blobs(32, seed=1)), batch_size=16)
    stages = [StageConfig(epochs=1, lr=3e-3, trainable=["3"]), StageConfig(epochs=1, lr=1e-3, trainable=["*"])]
    engine.fit(net(), train, val, train_config(stages=stages, t0=2, patience=10), out, ["a", "b"])
    resumed = train_config(stages=[*stages, StageConfig(epochs=1, lr=1e-3, trainable=["*"])], t0=2, patience=10)
    engine.fit(net(), train, val, resumed, out, ["a", "b"], resume=True)
    # Rank 1 is past its deadline at the first batch, rank 0 has an hour: both stop after that batch.
    deadline = time.monotonic() + (3600 if distributed.is_main() else -1)
    engine.fit(net(), train, val, train_config(epochs=3, t0=3, patience=10), out / "deadline", ["a", "b"],
               deadline=deadline)


def main(argv: list[str]) -> None:
    from rich.console import Console

    from common.config import CONFIG_DIR

    mode, data, out, dump = argv[0], Path(argv[1]), Path(argv[2]), Path(argv[3])
    overrides = [a for a in argv[4:] if a != "--set"]
    if not distributed.is_main():
        forbid_writes_under(out)
    console = Console(quiet=True)
    if mode == "engine":
        import common.engine as engine

        dump_fit(engine, dump)
        toy_fits(out)
        return
    if mode == "part":
        import industrial_qc.part_train as part_train
        from industrial_qc.config import load_qc_config

        dump_fit(part_train, dump)
        cfg = load_qc_config(CONFIG_DIR / "industrial_qc" / "tiny.yaml", overrides)
        outcome = part_train.train_part_run(data, cfg, out, console=console)
    else:
        import medical3d.train as med_train
        from medical3d.config import load_medical_config

        dump_fit(med_train, dump)
        cfg = load_medical_config(CONFIG_DIR / "medical3d" / "tiny.yaml", overrides)
        if not distributed.is_main():
            forbid_writes_under(Path(cfg.data.cache_dir))
        outcome = med_train.train(data, cfg, out, console=console)
    assert (outcome is None) == (not distributed.is_main()), "rank 0 returns the run, the others None"


if __name__ == "__main__":
    main(sys.argv[1:])
