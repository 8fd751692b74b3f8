"""``vsuite score --engine ray``: a ``ScoreJob`` (``common.scoring``) on Ray Data. The only module that imports Ray.

The rows become a dataset split into blocks of ``--batch-size`` rows. Decoding / preprocessing (``job.prepare``)
runs as Ray tasks; scoring runs in a pool of ``--workers`` actors with ``--cpus-per-worker`` CPUs each, every
actor loading the run once (its ONNX sessions live as long as the actor). Between the stages a row is its ``meta``
as JSON text (strict, and ASCII where a file name is not UTF-8, which Arrow strings could not hold) and its
decoded ``array`` as a tensor column; an actor sends back each record as JSON text. Output order is input order,
and the driver consumes the records as blocks complete, so the caller writes them as they come.

Without ``--address`` a local Ray is started for the job and shut down after it; with one, the driver connects
to that cluster and disconnects at the end (the cluster keeps running). In a process where Ray is already
initialized (a notebook, a test), that session is used and left as it is.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from common.errors import InputError
from common.results import dumps, error_record
from common.scoring import Prepare, ScoreOptions

DECODE_CPUS = 0.5  # CPUs a decode / preprocess task asks for: beside the actors, never starved by them


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise InputError(f"--engine ray: Ray is not installed ({exc}); install it with `pip install -c "
                         "constraints.txt 'ray[data]'` (make setup does) or use --engine local") from None
    return ray


def _prepare_batch(batch: dict[str, np.ndarray], prepare: Prepare) -> dict[str, Any]:
    """Task stage: rows (JSON text) -> ``meta`` (JSON text) and ``array`` (one numpy array per row)."""
    metas, arrays = [], []
    for text in batch["row"]:
        row = json.loads(str(text))
        try:
            meta, array = prepare(row)
        except Exception as exc:  # prepare functions return their errors; this is the net under them
            meta, array = {"source": row.get("source"), "error": f"{row.get('source')}: {type(exc).__name__}: "
                                                                  f"{exc}"}, np.zeros(0, np.uint8)
        metas.append(dumps(meta))
        arrays.append(array)
    return {"meta": np.array(metas, dtype=object), "array": arrays}


class ScoreActor:
    """Actor stage: one loaded scorer (``factory(*args)``, set on a subclass by ``_actor_class``) for the life of
    the actor; each batch -> one record (JSON text) per row."""

    factory: type
    args: tuple = ()

    def __init__(self) -> None:
        self.scorer = self.factory(*self.args)

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        out = []
        for text, array in zip(batch["meta"], batch["array"], strict=True):
            meta = json.loads(str(text))
            try:
                rec = self.scorer.score(meta, np.asarray(array))
            except Exception as exc:  # a scorer answers every row itself; this keeps one bad row one error row
                src = str(meta.get("source"))
                rec = error_record(src, f"{src}: {type(exc).__name__}: {exc}")
            out.append(dumps(rec))
        return {"record": np.array(out, dtype=object)}


def _actor_class(factory: type, args: tuple) -> type:
    """A ``ScoreActor`` subclass carrying the scorer and its arguments as class attributes: pickled with the
    class, so no constructor arguments sit in the object store for the life of the job."""
    return type(f"Score{factory.__name__}", (ScoreActor,), {"factory": factory, "args": tuple(args)})


def _connect(ray, options: ScoreOptions) -> bool:
    """Connect to ``--address`` or start a local Ray; whether this job owns the connection (and closes it)."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if options.address:
        try:
            ray.init(address=options.address, **quiet)
        except Exception as exc:
            raise InputError(f"--address {options.address}: cannot connect to a Ray cluster "
                             f"({type(exc).__name__}: {exc})") from None
        return True
    need = (options.workers or 1) * options.cpus_per_worker + DECODE_CPUS
    ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(need)), include_dashboard=False, **quiet)
    return True


def _workers(ray, options: ScoreOptions) -> int:
    """``--workers``, or as many actors as the cluster's CPUs hold beside the decode tasks; an InputError when
    the actors would leave no CPU for decoding (the job would wait forever)."""
    cpus = float(ray.cluster_resources().get("CPU", 0))
    workers = options.workers or max(1, int((cpus - DECODE_CPUS) // options.cpus_per_worker))
    if workers * options.cpus_per_worker + DECODE_CPUS > cpus:
        raise InputError(f"--workers {workers} x --cpus-per-worker {options.cpus_per_worker:g} leaves less than "
                         f"{DECODE_CPUS:g} of the cluster's {cpus:g} CPUs for decoding; use fewer workers or CPUs "
                         "per worker")
    return workers


def ray_records(rows: list[dict], prepare: Prepare, factory: type, args: tuple, options: ScoreOptions
                ) -> Iterator[dict]:
    """The records of ``rows`` in order, scored on Ray (see the module docstring), yielded as blocks complete."""
    ray = _import_ray()
    from ray.data import ActorPoolStrategy, DataContext

    own = _connect(ray, options)
    try:
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # no execution plan or progress-bar notes
        ctx = DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False  # the caller shows one progress bar for the job
        workers = _workers(ray, options)
        size = options.batch_size
        ds = ray.data.from_items([{"row": dumps(r)} for r in rows],
                                 override_num_blocks=max(1, math.ceil(len(rows) / size)))
        ds = ds.map_batches(_prepare_batch, fn_kwargs={"prepare": prepare}, batch_size=size, batch_format="numpy",
                            num_cpus=DECODE_CPUS)
        ds = ds.map_batches(_actor_class(factory, args), compute=ActorPoolStrategy(size=workers),
                            num_cpus=options.cpus_per_worker, batch_size=size, batch_format="numpy")
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for text in batch["record"]:
                yield json.loads(str(text))
    finally:
        if own:
            ray.shutdown()
