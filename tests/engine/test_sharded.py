"""Sharded jobs (engine.sharded): a sharded recording, atlas and activation cache equal one pass;
a job interrupted by a failing shard, a killed driver or a killed Ray worker finishes on rerun
with exactly the shards an uninterrupted run writes.

The Ray tests start a local Ray instance with two actors on this machine (`lmscope[ray]` is a
dev dependency, so they run in CI). Their model is a tiny random llama saved to a folder with a
word-level tokenizer, because Ray actors load their own copy with `lmscope.load(folder)`."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import make_tiny  # noqa: E402 - pytest puts tests/ on sys.path

import lmscope as ls
from lmscope.engine.errors import InputError
from lmscope.engine.sharded import MANIFEST, ShardOptions, run_sharded, shard_name
from lmscope.neurons.atlas import AtlasConfig, build_atlas, decode_model
from lmscope.neurons.recording import RecordConfig, RecordTask, record

WORDS = ["cat", "dog", "tree", "blue", "run", "fast", "house", "river", "old", "new", "sun", "rain", "red", "green",
         "walk", "stone", "bird", "song", "cold", "warm"]
CONFIG = RecordConfig(window=24, batch_size=4, shard_tokens=90, top_k=5, before=3, after=1)


def _texts(n_docs: int = 6, n_words: int = 160, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(n_words)) for _ in range(n_docs)]


def _save_tiny(folder: Path) -> Path:
    """A tiny random llama and a word-level tokenizer, loadable with lmscope.load(folder)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=len(vocab),
                               max_position_embeddings=128, tie_word_embeddings=False)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("tiny") / "m")


@pytest.fixture(scope="module")
def model(saved):
    return ls.load(str(saved))


@dataclass
class Slow:
    """A task whose shards take at least `delay` seconds (so a test can interrupt the job)."""

    inner: RecordTask
    delay: float = 0.3

    @property
    def kind(self) -> str:
        return self.inner.kind

    def identity(self) -> dict:
        return self.inner.identity()

    def plan(self) -> list[dict]:
        return self.inner.plan()

    def run(self, model, shard):
        time.sleep(self.delay)
        return self.inner.run(model, shard)


def _shard_tensors(folder: Path) -> list[dict]:
    from safetensors.torch import load_file

    n = json.loads((folder / MANIFEST).read_text())["n_shards"]
    return [load_file(str(folder / shard_name(i))) for i in range(n)]


def _same_shards(a: Path, b: Path) -> None:
    ta, tb = _shard_tensors(a), _shard_tensors(b)
    assert len(ta) == len(tb)
    for x, y in zip(ta, tb, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def _wait_for_shards(folder: Path, n: int, alive, what: str, timeout: float = 300) -> None:
    """Poll until `folder` holds n shard files, failing if `alive()` turns false first."""
    deadline = time.time() + timeout
    while len(list(folder.glob("shard-*.safetensors"))) < n:
        assert alive(), f"the {what} ended before it was interrupted"
        assert time.time() < deadline, f"the {what} wrote no {n} shards in {timeout:.0f} s"
        time.sleep(0.05)


def _same_recording(a, b, *, exact_moments: bool) -> None:
    assert a.n_tokens == b.n_tokens and a.sites.keys() == b.sites.keys()
    for name in a.sites:
        x, y = a.sites[name].stats, b.sites[name].stats
        assert x.count == y.count
        for t in ("hist", "n_pos", "max", "min"):
            assert torch.equal(getattr(x, t), getattr(y, t)), t
        if exact_moments:
            assert torch.equal(x.mean, y.mean) and torch.equal(x.m2, y.m2)
        else:  # one pass vs merged shards: the same sums in another order
            torch.testing.assert_close(x.mean, y.mean, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(x.m2, y.m2, rtol=1e-9, atol=1e-9)
        assert torch.equal(a.sites[name].top.vals, b.sites[name].top.vals)


# ---- in process ------------------------------------------------------------------------------

def test_sharded_recording_equals_one_pass(model, tmp_path):
    texts = _texts()
    one = record(model, "layers.*.mlp.neurons", texts, config=CONFIG)
    job = record(model, "layers.*.mlp.neurons", texts, config=CONFIG, shards=ShardOptions(folder=tmp_path / "job"))
    assert job.extra["job"]["shards"] > 3 and job.extra["job"]["ran"] == job.extra["job"]["shards"]
    _same_recording(one, job, exact_moments=False)
    manifest = json.loads((tmp_path / "job" / MANIFEST).read_text())
    assert manifest["complete"] and manifest["kind"] == "neuron_recording" and len(manifest["shard_seconds"]) == \
        manifest["n_shards"]
    again = record(model, "layers.*.mlp.neurons", texts, config=CONFIG, shards=ShardOptions(folder=tmp_path / "job"))
    assert again.extra["job"]["ran"] == 0  # nothing left to run: the shards are read back
    _same_recording(job, again, exact_moments=True)


def test_sharded_recording_of_every_tiny_family_equals_one_pass(tiny, tmp_path):
    texts = ["abcdefghij" * 9, "klmnopqrst" * 7, "uvwxyz" * 11]
    cfg = RecordConfig(window=16, batch_size=2, shard_tokens=30, top_k=3)
    one = record(tiny, "layers.1.mlp.neurons", texts, config=cfg)
    job = record(tiny, "layers.1.mlp.neurons", texts, config=cfg, shards=ShardOptions(folder=tmp_path / "j"))
    assert job.extra["job"]["shards"] >= 4
    _same_recording(one, job, exact_moments=False)


def test_a_failed_shard_resumes_with_the_same_shards(model, tmp_path, monkeypatch):
    texts = _texts(seed=1)
    record(model, "layers.1.mlp.neurons", texts, config=CONFIG, shards=ShardOptions(folder=tmp_path / "whole"))
    calls = []
    real = RecordTask.run

    def failing(self, m, shard):
        calls.append(shard["lo"])
        if len(calls) == 3:
            raise RuntimeError("worker lost")
        return real(self, m, shard)

    monkeypatch.setattr(RecordTask, "run", failing)
    with pytest.raises(RuntimeError, match="worker lost"):
        record(model, "layers.1.mlp.neurons", texts, config=CONFIG, shards=ShardOptions(folder=tmp_path / "cut"))
    assert sorted(p.name for p in (tmp_path / "cut").glob("shard-*")) == [shard_name(0), shard_name(1)]
    monkeypatch.setattr(RecordTask, "run", real)
    rec = record(model, "layers.1.mlp.neurons", texts, config=CONFIG, shards=ShardOptions(folder=tmp_path / "cut"))
    assert rec.extra["job"]["ran"] == rec.extra["job"]["shards"] - 2
    _same_shards(tmp_path / "whole", tmp_path / "cut")


def test_job_folder_guards(model, tmp_path):
    texts = _texts(n_docs=2)
    opts = ShardOptions(folder=tmp_path / "job")
    record(model, "layers.0.mlp.neurons", texts, config=CONFIG, shards=opts)
    with pytest.raises(InputError, match="another job.*sites"):  # other sites, same folder
        record(model, "layers.1.mlp.neurons", texts, config=CONFIG, shards=opts)
    other = ls.load(str(model.load_args["spec"]))
    other.name = "another-model"  # same weights and settings, another model's name: not the same job
    with pytest.raises(InputError, match="another job.*model"):
        record(other, "layers.0.mlp.neurons", texts, config=CONFIG, shards=opts)
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        record(model, "layers.0.mlp.neurons", texts, config=CONFIG, shards=ShardOptions(folder=tmp_path / "stuff"))
    (tmp_path / "job" / shard_name(1)).write_bytes(b"not a safetensors file")  # damaged: redone on rerun
    rec = record(model, "layers.0.mlp.neurons", texts, config=CONFIG, shards=opts)
    assert rec.extra["job"]["ran"] == 1
    with pytest.raises(InputError, match="backend"):
        ShardOptions(folder=tmp_path, backend="spark")
    with pytest.raises(InputError, match="lmscope.load"):  # a hand-wrapped model cannot travel to Ray workers
        record(make_tiny("llama"), "layers.0.mlp.neurons", ["abc" * 20], config=CONFIG,
               shards=ShardOptions(folder=tmp_path / "ray", backend="ray"))


def test_killed_driver_then_rerun_finishes_with_the_same_shards(saved, model, tmp_path):
    texts = _texts(seed=2)
    record(model, "layers.*.mlp.neurons", texts, config=CONFIG, shards=ShardOptions(folder=tmp_path / "whole"))
    script = textwrap.dedent(f"""
        import sys, time, json
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
        import lmscope as ls
        from test_sharded import Slow, CONFIG, _texts
        from lmscope.engine.sharded import ShardOptions, run_sharded
        from lmscope.neurons.recording import RecordTask
        m = ls.load({str(saved)!r})
        sites = [s.name for s in m.sites("layers.*.mlp.neurons")]
        windows = __import__("lmscope.datasets.corpus", fromlist=["x"]).token_windows(m, _texts(seed=2), window=CONFIG.window)
        run_sharded(m, Slow(RecordTask(sites, windows, CONFIG), delay=0.4), ShardOptions(folder={str(tmp_path / "cut")!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        _wait_for_shards(tmp_path / "cut", 2, lambda: proc.poll() is None, "driver", timeout=120)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    n = json.loads((tmp_path / "cut" / MANIFEST).read_text())["n_shards"]
    have = len(list((tmp_path / "cut").glob("shard-*.safetensors")))
    assert 2 <= have < n
    rec = record(model, "layers.*.mlp.neurons", texts, config=CONFIG, shards=ShardOptions(folder=tmp_path / "cut"))
    assert rec.extra["job"]["ran"] == n - have
    _same_shards(tmp_path / "whole", tmp_path / "cut")


def test_sharded_atlas_equals_decode_model(model, tmp_path):
    from lmscope.engine.sharded import ShardSet
    from lmscope.neurons.atlas import AtlasTask

    cfg = AtlasConfig(k=5)
    table = decode_model(model, cfg)
    with build_atlas(model, cfg, path=tmp_path / "a.sqlite", shards=ShardOptions(folder=tmp_path / "job")) as a:
        assert a.meta["layers"] == list(range(model.n_layers))
        for kind in table.kinds:
            assert a.top1(kind).tolist() == table.ids[kind][..., 0].tolist()
    manifest = json.loads((tmp_path / "job" / MANIFEST).read_text())
    merged = AtlasTask(cfg, tuple(range(model.n_layers))).merge(model, ShardSet(tmp_path / "job", manifest))
    for kind in table.kinds:
        assert torch.equal(merged.ids[kind], table.ids[kind]) and torch.equal(merged.scores[kind], table.scores[kind])


# ---- Ray: two local workers --------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the Slow task travels by value
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


def _worker_pids(folder: Path) -> list[int]:
    p = folder / "workers.jsonl"
    if not p.is_file():
        return []
    return [int(json.loads(line)["worker"].rsplit(":", 1)[1]) for line in p.read_text().splitlines() if line]


def test_ray_two_workers_with_one_killed_equal_in_process(ray_local, saved, model, tmp_path):
    from lmscope.datasets.corpus import token_windows

    texts = _texts(n_docs=8, seed=3)
    sites = [s.name for s in model.sites("layers.*.mlp.neurons")]
    task = RecordTask(sites, token_windows(model, texts, window=CONFIG.window), CONFIG)
    local = run_sharded(model, task, ShardOptions(folder=tmp_path / "local"))
    box = {}
    opts = ShardOptions(folder=tmp_path / "ray", backend="ray", workers=2)
    th = threading.Thread(target=lambda: box.setdefault("done", run_sharded(model, Slow(task, delay=0.5), opts)))
    th.start()
    _wait_for_shards(tmp_path / "ray", 2, th.is_alive, "Ray job")
    while len(_worker_pids(tmp_path / "ray")) < 2:  # the second actor may still be loading the model
        assert th.is_alive(), "the Ray job ended before a worker was killed"
        time.sleep(0.05)
    victim = _worker_pids(tmp_path / "ray")[0]
    os.kill(victim, signal.SIGKILL)
    th.join(600)
    assert not th.is_alive() and "done" in box
    assert len(_worker_pids(tmp_path / "ray")) >= 3  # the killed actor was restarted (it reloads the model)
    metas = {json.loads(line)["worker"] for line in (tmp_path / "ray" / "workers.jsonl").read_text().splitlines()}
    assert any(m.endswith(f":{victim}") for m in metas)
    _same_shards(tmp_path / "local", tmp_path / "ray")
    a, b = task.merge(model, local), task.merge(model, box["done"])
    _same_recording(a, b, exact_moments=True)


def test_ray_atlas_equals_in_process(ray_local, model, tmp_path):
    cfg = AtlasConfig(k=4)
    table = decode_model(model, cfg)
    with build_atlas(model, cfg, path=tmp_path / "a.sqlite",
                     shards=ShardOptions(folder=tmp_path / "job", backend="ray", workers=2)) as a:
        assert a.meta["search"] == {"method": "exact"}
        for kind in table.kinds:
            assert a.top1(kind).tolist() == table.ids[kind][..., 0].tolist()


def test_sharded_activation_cache_equals_one_pass(model, tmp_path):
    from lmscope.saes.activations import ActivationCache, build_cache

    texts = _texts(n_docs=4, seed=4)
    sites = ["layers.1.resid_post", "layers.2.mlp_out"]
    one = build_cache(model, texts, sites, path=tmp_path / "one", window=24, dtype="float32", shard_tokens=10**6)
    job = build_cache(model, texts, sites, window=24, dtype="float32", shard_tokens=100, batch_windows=4,
                      shards=ShardOptions(folder=tmp_path / "job"))
    assert job.n_shards > 2 and job.n_tokens == one.n_tokens
    for s in sites:
        rows = torch.cat([job.shard(i)[s] for i in range(job.n_shards)])
        torch.testing.assert_close(rows, one.shard(0)[s], rtol=0, atol=1e-6)  # batches of 4 vs 16 windows
    again = ActivationCache(tmp_path / "job")
    assert again.manifest["job"] == MANIFEST and again.n_tokens == one.n_tokens
    assert build_cache(model, texts, sites, window=24, dtype="float32", shard_tokens=100, batch_windows=4,
                       shards=ShardOptions(folder=tmp_path / "job")).n_tokens == one.n_tokens  # reused


def test_cli_record_and_atlas_as_jobs(tiny_load, tmp_path):
    from click.testing import CliRunner

    from lmscope.cli.main import cli

    args = ["neuron", "record", "tiny", "--layers", "0,1", "--max-tokens", "300", "--window", "16",
            "--batch-size", "2", "--shard-tokens", "60", "--job", str(tmp_path / "rec"), "--json"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    job = json.loads(r.stdout)["job"]
    assert job["shards"] >= 3 and job["ran"] == job["shards"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and json.loads(r.stdout)["job"]["ran"] == 0  # resumed: nothing left
    r = CliRunner().invoke(cli, ["atlas", "build", "tiny", "--k", "3", "--out", str(tmp_path / "a.sqlite"),
                                 "--job", str(tmp_path / "atlas"), "--search", "approx", "--rank", "8",
                                 "--candidates", "16", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["search"] == {"method": "approx", "rank": 8, "candidates": 16}
    r = CliRunner().invoke(cli, ["neuron", "record", "tiny", "--backend", "ray", "--workers", "2"])
    assert r.exit_code == 2 and "need --job DIR" in r.output


@pytest.mark.slow
def test_gemma_recording_on_two_ray_workers_equals_one_pass(ray_local, gemma, tmp_path):
    from lmscope.datasets.corpus import read_texts

    cfg = RecordConfig(max_tokens=1536, window=64, batch_size=8, shard_tokens=400, top_k=5)
    sites = ["layers.3.mlp.neurons", "layers.9.mlp.neurons[0,5,1624]"]
    texts = read_texts(None)
    one = record(gemma, sites, texts, config=cfg)
    job = record(gemma, sites, texts, config=cfg,
                 shards=ShardOptions(folder=tmp_path / "job", backend="ray", workers=2))
    assert job.extra["job"]["shards"] >= 3
    pids = _worker_pids(tmp_path / "job")
    assert len(pids) == 2 and os.getpid() not in pids  # two actors did the work, not this process
    _same_recording(one, job, exact_moments=False)
    assert job.neuron_stats(9, 1624)["max"] == one.neuron_stats(9, 1624)["max"]


def test_ray_driver_killed_then_rerun_finishes_with_the_same_shards(ray_local, saved, model, tmp_path):
    """The driver (and the Ray instance it started, in its process group) is killed mid-job;
    a rerun on Ray in this process runs only the missing shards."""
    from lmscope.datasets.corpus import token_windows

    texts = _texts(n_docs=8, seed=5)
    sites = [s.name for s in model.sites("layers.*.mlp.neurons")]
    task = RecordTask(sites, token_windows(model, texts, window=CONFIG.window), CONFIG)
    run_sharded(model, task, ShardOptions(folder=tmp_path / "whole"))
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
        import ray
        from ray import cloudpickle
        import lmscope as ls, test_sharded as T
        from lmscope.datasets.corpus import token_windows
        from lmscope.engine.sharded import ShardOptions, run_sharded
        from lmscope.neurons.recording import RecordTask
        cloudpickle.register_pickle_by_value(T)
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, log_to_driver=False)
        m = ls.load({str(saved)!r})
        sites = [s.name for s in m.sites("layers.*.mlp.neurons")]
        task = RecordTask(sites, token_windows(m, T._texts(n_docs=8, seed=5), window=T.CONFIG.window), T.CONFIG)
        run_sharded(m, T.Slow(task, delay=0.5), ShardOptions(folder={str(tmp_path / "cut")!r}, backend="ray", workers=2))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_shards(tmp_path / "cut", 2, lambda: proc.poll() is None, "Ray driver")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        proc.wait(30)
    time.sleep(1)
    n = json.loads((tmp_path / "cut" / MANIFEST).read_text())["n_shards"]
    have = len(list((tmp_path / "cut").glob("shard-*.safetensors")))
    assert 2 <= have < n
    done = run_sharded(model, task, ShardOptions(folder=tmp_path / "cut", backend="ray", workers=2))
    assert done.ran == n - have
    _same_shards(tmp_path / "whole", tmp_path / "cut")
