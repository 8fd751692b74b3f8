"""What stage 1 adds to Ultralytics' trainer through its callbacks: our setup before the first step (threads,
channels-last, EMA, defect copy-paste), sparse validation, the progress bar, and notes for metrics.json."""

from __future__ import annotations

from industrial_qc import paste
from industrial_qc.config import DetectorConfig


def before_training(cfg: DetectorConfig, threads: int | None, seed: int = 0, stats: dict | None = None):
    """Callback for Ultralytics' ``on_pretrain_routine_end`` (model, optimizer and EMA built, no step taken):
    the torch threads we were asked for (Ultralytics' device selection sets cores - 1 for CPU training, which
    leaves a core to wait for the data loader); channels-last
    weights, so oneDNN's convolutions skip a layout conversion per layer; the weight average (EMA) sized to
    this run (``ema_decay``, ``ema_tau``); and in-image defect copy-paste on the training set (``paste``; its
    counts go to ``stats``)."""

    def callback(trainer) -> None:
        import torch
        from ultralytics.utils.torch_utils import ModelEMA

        from common.runtime import set_torch_threads

        set_torch_threads(threads)
        if cfg.channels_last:
            trainer.model.to(memory_format=torch.channels_last)
        if trainer.ema is not None and trainer.ema.updates == 0:
            trainer.ema = ModelEMA(trainer.model, decay=cfg.ema_decay, tau=cfg.ema_tau)
        paste.install(trainer.train_loader.dataset, cfg.paste, seed, stats)

    return callback


def sparse_validation(cfg: DetectorConfig):
    """Callback for Ultralytics' ``on_train_epoch_end`` (just before it decides whether to validate): validate
    every ``val_every`` epochs and over the last ``val_last`` ones (``trainer.epochs`` is re-planned from the time
    budget as training goes). Ultralytics still validates the final epoch, when time is up and when early
    stopping is near. A skipped epoch's fitness is cleared: ``save_model`` writes best.pt when the epoch's fitness
    equals the best so far, which a stale value from the previous (best) epoch would do for unvalidated weights."""

    def callback(trainer) -> None:
        epoch = trainer.epoch + 1  # 1-based: the epoch that just ended
        validate = (cfg.val_every <= 1 or epoch % cfg.val_every == 0 or epoch == 1
                    or epoch > trainer.epochs - cfg.val_last)
        trainer.args.val = validate
        if not validate:
            trainer.fitness = None

    return callback


def epoch_progress(progress, task):
    """Callback for ``on_fit_epoch_end``: epochs done, and the latest val mAP50 and recall, on the progress bar."""
    from common.progress import update_rate

    shown: set[int] = set()
    last_val = [""]

    def on_epoch(trainer) -> None:
        if trainer.epoch in shown or trainer.epoch >= trainer.epochs:
            return  # the final validation of best.pt fires this hook again
        shown.add(trainer.epoch)
        if trainer.fitness is not None:  # validated this epoch (see sparse_validation)
            m = trainer.metrics or {}
            last_val[:] = [f"val mAP50 {float(m.get('metrics/mAP50(B)', 0.0)):.3f} "
                           f"recall {float(m.get('metrics/recall(B)', 0.0)):.3f} (epoch {trainer.epoch + 1})"]
        progress.update(task, total=trainer.epochs, completed=trainer.epoch + 1, info=last_val[0])
        update_rate(progress, task, "epoch")

    return on_epoch


def add_training_callbacks(model, cfg: DetectorConfig, threads: int | None, seed: int, during: dict) -> None:
    """Our setup before the first step and the sparse validation, plus notes in ``during`` of what the training
    steps really ran with (for metrics.json): torch threads, validation passes, the epochs that wrote best.pt."""
    model.add_callback("on_pretrain_routine_end", before_training(cfg, threads, seed, during))

    def on_train_epoch_end(trainer) -> None:
        import torch

        during["torch_threads"] = torch.get_num_threads()

    model.add_callback("on_train_epoch_end", on_train_epoch_end)
    model.add_callback("on_train_epoch_end", sparse_validation(cfg))

    def on_val_start(validator) -> None:  # the trainer's validator shares its callbacks
        during["val_passes"] = during.get("val_passes", 0) + 1  # incl. the final pass on best.pt

    model.add_callback("on_val_start", on_val_start)

    def on_model_save(trainer) -> None:  # last.pt is written each epoch, best.pt when this epoch is the best
        if trainer.fitness is not None and trainer.best_fitness == trainer.fitness:
            during.setdefault("best_epochs", []).append(trainer.epoch + 1)  # each epoch that wrote best.pt

    model.add_callback("on_model_save", on_model_save)
