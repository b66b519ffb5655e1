"""Corpus-scale work as sharded jobs: a plan of shards, workers that hold the model, resumable
output shards with a manifest, and a merge done by the family that planned the job.

    task = RecordTask(...)                                   # a family's `ShardTask`
    done = run_sharded(model, task, ShardOptions(folder="runs/rec", backend="ray", workers=2))
    result = task.merge(model, done)                         # exact: the family's own merge

A job folder holds

    job.json                  the manifest: format, kind, model, the task's identity, the plan
                              (one JSON description per shard) and its hash; written before any
                              shard, rewritten with per-shard timings when the job completes
    shard-00000.safetensors   one shard's output tensors; its header metadata names the plan
                              hash, the shard index, the worker (host, pid) and the seconds
    workers.jsonl             one line per worker start (host, pid, backend): who took part

Shards are written atomically (a temporary file renamed into place), so a shard file is either
complete or absent. A rerun on the same folder checks that the manifest describes the same job
(same identity and plan, else it refuses and names the difference), skips every shard whose
file is present and valid, and runs only the others: killing a worker or the driver mid-job and
rerunning finishes with the same shards, hence the same merged result, as an uninterrupted run.
Shard outputs are deterministic given the model and the shard, whichever worker ran them.

Backends (`backend=`):

- `"local"` (the default, no extra dependency): the shards run one after another in this
  process, on the model passed in.
- `"ray"` (`pip install 'lmscope[ray]'`): Ray Data streams the pending shard indices through a
  pool of `workers` actors (`map_batches` with an actor class); each actor loads the model once
  from `model.load_args` (a model from `lmscope.load`) and writes the shards it gets into the
  folder, which must be visible to every worker (the local disk on one machine, a shared
  filesystem on a cluster). Ray Data restarts a killed actor and retries its shard. `ray_address`
  joins a running cluster ("auto", "ray://host:10001"); without one a local Ray instance is
  started with `workers` CPUs' worth of actors.

A `ShardTask` (a family's object, picklable: it travels to the actors) has

    kind: str                                  what it computes, e.g. "neuron_recording"
    identity() -> dict                         JSON: everything that fixes the outputs
    plan() -> list[dict]                       JSON shard descriptions, in merge order
    run(model, shard: dict) -> dict[str, Tensor]   one shard's outputs (CPU tensors)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from lmscope.engine.artifacts import atomic_write
from lmscope.engine.errors import ArtifactError, InputError
from lmscope.engine.model import Model
from lmscope.engine.progress import bar as progress_bar

log = logging.getLogger(__name__)

FORMAT = "lmscope-sharded-job"
MANIFEST = "job.json"
WORKERS_LOG = "workers.jsonl"
BACKENDS = ("local", "ray")


class ShardTask(Protocol):
    kind: str

    def identity(self) -> dict: ...

    def plan(self) -> list[dict]: ...

    def run(self, model: Model, shard: dict) -> dict[str, Tensor]: ...


@dataclass(frozen=True, kw_only=True)
class ShardOptions:
    """Where and how a sharded job runs.

    Attributes:
        folder: The job folder (created; rerun on the same folder to resume).
        backend: "local" (this process) or "ray" (`pip install 'lmscope[ray]'`).
        workers: Ray actors, each holding the model.
        cpus_per_worker: CPUs reserved per actor (also its torch thread count).
        gpus_per_worker: GPUs reserved per actor (0 on a CPU machine).
        ray_address: A running Ray cluster to join (None: start a local one).
    """

    folder: str | os.PathLike
    backend: str = "local"
    workers: int = 1
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(f"Unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}.")
        if self.workers < 1 or self.cpus_per_worker < 1 or self.gpus_per_worker < 0:
            raise InputError("workers and cpus_per_worker must be at least 1, gpus_per_worker at least 0.")


@dataclass
class ShardSet:
    """The shards of a completed job, read in plan order (what a family's merge consumes)."""

    folder: Path
    manifest: dict
    ran: int = 0  # shards run by this call (the others were already done)
    seconds: float = 0.0
    shard_seconds: list[float] = field(default_factory=list)

    @property
    def plan(self) -> list[dict]:
        return self.manifest["plan"]

    def __len__(self) -> int:
        return len(self.plan)

    def path(self, i: int) -> Path:
        return self.folder / shard_name(i)

    def load(self, i: int) -> dict[str, Tensor]:
        """Shard i's tensors (validated: it belongs to this job)."""
        p = self.path(i)
        if _shard_meta(p, self.manifest["plan_hash"], i) is None:
            raise ArtifactError(f"{p} is missing or belongs to another job; rerun the job on {self.folder}.")
        try:
            return load_file(str(p))
        except (SafetensorError, OSError) as e:
            raise ArtifactError(f"Cannot read {p} ({e}); delete it and rerun the job to redo that shard.") from None

    def rows(self, i: int, name: str) -> int:
        """Rows of tensor `name` in shard i, read from its header (no data loaded)."""
        try:
            with safe_open(str(self.path(i)), framework="pt") as f:
                return int(f.get_slice(name).get_shape()[0])
        except (SafetensorError, OSError, KeyError) as e:
            raise ArtifactError(f"Cannot read {name!r} of {self.path(i)} ({e}); rerun the job.") from None

    def __iter__(self):
        for i in range(len(self)):
            yield self.plan[i], self.load(i)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def plan_hash(kind: str, model_name: str, identity: dict, plan: Sequence[dict]) -> str:
    blob = json.dumps([kind, model_name, identity, list(plan)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _shard_meta(path: Path, want_hash: str, index: int) -> dict | None:
    """The header metadata of a finished shard of this job, or None (absent, unreadable, other job)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError):
        return None
    if meta.get("job") != want_hash or meta.get("index") != str(index):
        return None
    return meta


def _read_manifest(folder: Path) -> dict | None:
    p = folder / MANIFEST
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise ArtifactError(f"{p} is not a readable job manifest ({e}); delete {folder} to start over.") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{p} is not an lmscope sharded-job manifest (format {FORMAT!r}); pick another folder.")
    return m


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1), "utf-8"))


def prepare(task: ShardTask, folder: str | os.PathLike, model_name: str) -> tuple[dict, list[int]]:
    """Create or check the job folder. Returns (manifest, indices of the shards still to run)."""
    folder = Path(folder)
    identity, plan = task.identity(), task.plan()
    if not plan:
        raise InputError(f"The {task.kind} job has nothing to do (its plan has no shard).")
    h = plan_hash(task.kind, model_name, identity, plan)
    have = _read_manifest(folder)
    if have is not None:
        if have.get("plan_hash") != h:
            diff = [k for k in ("kind", "model") if have.get(k) != {"kind": task.kind, "model": model_name}[k]]
            diff += [k for k in identity if have.get("identity", {}).get(k) != identity[k]]
            what = ", ".join(diff) or "the shard plan"
            raise InputError(f"{folder} holds another job (its {what} differs); rerun with the same settings to "
                             "resume it, or pick another folder.")
        manifest = have
    else:
        if folder.exists() and any(folder.iterdir()):
            raise InputError(f"{folder} is not empty and holds no {MANIFEST}; pick an empty or new folder.")
        manifest = {"format": FORMAT, "version": 1, "kind": task.kind, "model": model_name, "identity": identity,
                    "plan_hash": h, "n_shards": len(plan), "plan": plan, "complete": False,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / MANIFEST, manifest)
    todo = [i for i in range(len(plan)) if _shard_meta(folder / shard_name(i), h, i) is None]
    return manifest, todo


def write_shard(folder: Path, manifest: dict, i: int, tensors: dict[str, Tensor], seconds: float,
                worker: str) -> None:
    """Write shard i atomically, with the job's hash in its header."""
    meta = {"job": manifest["plan_hash"], "index": str(i), "kind": manifest["kind"], "seconds": f"{seconds:.4f}",
            "worker": worker}
    out = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(folder / shard_name(i), lambda tmp: save_file(out, str(tmp), metadata=meta))


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _log_worker(folder: Path, backend: str) -> None:
    line = json.dumps({"worker": _worker_id(), "backend": backend, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    with open(folder / WORKERS_LOG, "a", encoding="utf-8") as f:  # one short O_APPEND write: atomic
        f.write(line + "\n")


def run_one(model: Model, task: ShardTask, folder: Path, manifest: dict, i: int) -> float:
    """Run shard i on `model` and write it; returns its seconds."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = task.run(model, manifest["plan"][i])
    seconds = time.perf_counter() - t0
    write_shard(folder, manifest, i, out, seconds, _worker_id())
    return seconds


def run_sharded(model: Model, task: ShardTask, options: ShardOptions, *, progress: bool = False) -> ShardSet:
    """Run every pending shard of `task` (see the module docstring) and return the complete set.

    Args:
        model: The model (the local backend runs on it; Ray actors load their own copy from
            `model.load_args`).
        task: The family's task.
        options: Folder and backend.
        progress: Show a progress bar over shards.
    """
    folder = Path(options.folder)
    manifest, todo = prepare(task, folder, model.name)
    t0 = time.perf_counter()
    secs: dict[int, float] = {}
    if todo:
        log.info("%s job in %s: %d of %d shards to run (%s)", task.kind, folder, len(todo), manifest["n_shards"],
                 options.backend)
        with progress_bar(total=manifest["n_shards"], initial=manifest["n_shards"] - len(todo), unit="shard",
                          desc=task.kind, show=progress) as bar:
            if options.backend == "local":
                _log_worker(folder, "local")
                for i in todo:
                    secs[i] = run_one(model, task, folder, manifest, i)
                    bar.update(1)
            else:
                for i, s in _run_ray(model, task, folder, manifest, todo, options):
                    secs[i] = s
                    bar.update(1)
    if not manifest.get("complete") or secs:
        metas = [_shard_meta(folder / shard_name(i), manifest["plan_hash"], i) for i in range(manifest["n_shards"])]
        missing = [i for i, m in enumerate(metas) if m is None]
        if missing:
            raise ArtifactError(f"{len(missing)} shards of the job in {folder} are missing after the run (first: "
                                f"{missing[0]}); rerun it to finish them.")
        manifest = {**manifest, "complete": True, "shard_seconds": [float(m["seconds"]) for m in metas],
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_json(folder / MANIFEST, manifest)
    return ShardSet(folder, manifest, ran=len(secs), seconds=time.perf_counter() - t0,
                    shard_seconds=list(manifest.get("shard_seconds", [])))


# ---- Ray ------------------------------------------------------------------------------------

def _ray():
    try:
        import ray
    except ImportError:
        raise InputError("backend='ray' needs Ray: pip install 'lmscope[ray]' (or pass backend='local').") from None
    return ray


class _ShardWorker:
    """A Ray Data actor: loads the model once, then runs the shard indices it is given."""

    def __init__(self, load_args: dict, task: ShardTask, folder: str, manifest: dict, threads: int) -> None:
        from lmscope.engine.loading import load

        torch.set_num_threads(threads)
        self.model = load(**load_args, quiet=True)
        self.task, self.folder, self.manifest = task, Path(folder), manifest
        _log_worker(self.folder, "ray")

    def __call__(self, batch: dict) -> dict:
        idx = [int(i) for i in batch["index"]]
        secs = [run_one(self.model, self.task, self.folder, self.manifest, i) for i in idx]
        return {"index": idx, "seconds": secs}


def _run_ray(model: Model, task: ShardTask, folder: Path, manifest: dict, todo: list[int], options: ShardOptions):
    ray = _ray()
    if model.load_args is None:
        raise InputError("backend='ray' needs a model from lmscope.load(...) (its workers load the same one); "
                         "this model was wrapped by hand, so use backend='local'.")
    if not ray.is_initialized():
        kw = {"address": options.ray_address} if options.ray_address else {
            "num_cpus": options.workers * options.cpus_per_worker, "include_dashboard": False,
            "object_store_memory": 256 * 2**20}
        ray.init(ignore_reinit_error=True, log_to_driver=False, configure_logging=False, **kw)
    import ray.data

    if not log.isEnabledFor(logging.DEBUG):  # Ray Data's per-dataset INFO lines; our bar says the same
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items([{"index": i} for i in todo], override_num_blocks=len(todo))
    gpus = {"num_gpus": options.gpus_per_worker} if options.gpus_per_worker else {}
    ds = ds.map_batches(
        _ShardWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=options.workers),
        num_cpus=options.cpus_per_worker, **gpus,
        fn_constructor_kwargs={"load_args": model.load_args, "task": task, "folder": str(folder.resolve()),
                               "manifest": manifest, "threads": options.cpus_per_worker})
    for row in ds.iter_rows():
        yield int(row["index"]), float(row["seconds"])
