"""Where ``afde bench`` runs its cells: in this process (``serial``, the default) or as Ray tasks
(``ray``: locally, or on a cluster with ``address``). Both call the same
:func:`afde_nb.eval.bench.cells.safe_compute`; training is one task per (data set, seed) whose model is
shared by that model's cells through Ray's object store.

Bit-identical numbers: each Ray worker runs with the driver's thread counts (torch, OpenMP,
OpenBLAS, MKL), so every floating-point reduction is split the same way as in the serial run (on
one machine; on a cluster of different CPUs the last bits may differ).
"""
from __future__ import annotations

import os
from typing import Callable

from ...errors import InvalidArgumentError, MissingDependencyError
from .cells import Journal, safe_compute

BACKENDS = ("serial", "ray")


def run_serial(todo, profile, journal: Journal, train: Callable, on_done: Callable) -> None:
    models: dict = {}
    for key in todo:
        ds, seed = key[0], key[1]
        if (ds, seed) not in models:
            models.clear()  # cells come grouped by model: keep one in memory
            try:
                models[(ds, seed)] = train(ds, seed)
            except Exception as exc:  # noqa: BLE001
                models[(ds, seed)] = exc
        got = models[(ds, seed)]
        rec = ({"key": list(key), "rows": [], "error": f"training failed: {type(got).__name__}: {got}"}
               if isinstance(got, Exception) else safe_compute(key, got[0], got[1], profile))
        journal.add(rec)
        on_done(rec)


def _threads_env() -> dict:
    import torch

    n = str(torch.get_num_threads())
    env = {k: os.environ.get(k, n) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env["AFDE_TORCH_THREADS"] = n
    # Workers train into (and load from) the same model cache and read the same data home; they
    # start in another folder, so relative paths are resolved here.
    for var in ("AFDE_NB_CACHE", "AFDE_NB_DATA"):
        if os.environ.get(var):
            env[var] = os.path.abspath(os.path.expanduser(os.environ[var]))
    return env


def run_ray(todo, profile, journal: Journal, train: Callable, on_done: Callable, address: str | None = None,
            workers: int | None = None) -> None:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(
            "--backend ray needs Ray: pip install \".[ray]\" in the afde-nb checkout") from exc
    import tempfile

    # Workers start in an empty folder of their own: Ray would otherwise put the driver's working
    # directory first on their sys.path, and from a source checkout that imports the package
    # without its compiled engine instead of the installed one.
    runtime_env = {"env_vars": _threads_env(), "working_dir": tempfile.mkdtemp(prefix="afde-ray-")}
    if address is None:
        ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 runtime_env=runtime_env, ignore_reinit_error=True)
    else:
        if workers is not None:
            raise InvalidArgumentError("--workers sizes a local Ray; a cluster (--address) has its own")
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env, ignore_reinit_error=True)
    try:
        def pin():
            import torch

            torch.set_num_threads(int(os.environ.get("AFDE_TORCH_THREADS", torch.get_num_threads())))

        @ray.remote(max_retries=0)
        def train_task(ds, seed):
            pin()
            return train(ds, seed)

        @ray.remote(max_retries=0)
        def cell_task(key, trained, prof):
            pin()
            return safe_compute(key, trained[0], trained[1], prof)

        models = {}
        pending = {}
        for key in todo:
            mk = (key[0], key[1])
            if mk not in models:
                models[mk] = train_task.remote(*mk)
            pending[cell_task.remote(key, models[mk], profile)] = key
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                key = pending.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a failed task or its training: record it
                    rec = {"key": list(key), "rows": [], "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
                journal.add(rec)
                on_done(rec)
    finally:
        ray.shutdown()
