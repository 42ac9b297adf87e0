"""ctxrec.distributed on a real 2-worker LocalCluster (separate processes, nannies):
results identical to the single-process path, loaded once per worker, a worker killed
mid-job without duplicate or missing rows, the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

distributed = pytest.importorskip("distributed", reason="needs the distributed extra (dask[distributed])")

from ctxrec import distributed as D  # noqa: E402
from ctxrec.context import ContextSpec  # noqa: E402
from ctxrec.model import ContextFM  # noqa: E402
from ctxrec.recommender import Recommender  # noqa: E402
from _synthetic_data import HashingEncoder, planted_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENCODER_DIR = ROOT / "models" / "build" / "all-MiniLM-L6-v2"
MORNING = "2024-04-01T08:15:00Z"
NIGHT = "2024-04-01T22:30:00Z"


def _cluster(**kw):
    # separate worker processes under nannies, as in production; no fixed dashboard port
    return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                    silence_logs=40, **kw)


@pytest.fixture(scope="module")
def client():
    with _cluster() as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def dataset(planted):
    return planted


@pytest.fixture(scope="module")
def rec(dataset):
    spec = ContextSpec(time=["timestamp"], categorical=["device"])
    return Recommender(spec, model=ContextFM(n_factors=8, epochs=3, random_state=1), encoder=None).fit(dataset)


@pytest.fixture(scope="module")
def model_dir(rec, tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "rec"
    rec.save(d)
    return d


@pytest.fixture(scope="module")
def requests(rec):
    """One request per known user plus two unknown users; contexts vary per row (some cells empty)."""
    users = list(rec.user_ids_) + ["nobody", "someone-else"]
    n = len(users)
    return pd.DataFrame({"user_id": users,
                         "timestamp": [MORNING if i % 3 else NIGHT for i in range(n)],
                         "device": [["tv", "mobile", None][i % 3] for i in range(n)]})


def _context(row: pd.Series, base: dict | None = None) -> dict:
    ctx = dict(base or {})
    ctx.update({k: v for k, v in row.items() if k != "user_id" and v is not None and not pd.isna(v)})
    return ctx


def _assert_same(got: pd.DataFrame, rec: Recommender, req: pd.DataFrame, k: int, base: dict | None = None,
                 **options) -> None:
    """Every request answered exactly once, exactly as Recommender.recommend answers it."""
    assert len(got) == len(req)
    assert got["row"].tolist() == list(range(len(req)))  # no duplicate, no missing row
    for i, row in req.iterrows():
        want = rec.recommend(row["user_id"], _context(row, base), k=k, **options)
        assert got["user_id"][i] == row["user_id"]
        assert list(got["item_ids"][i]) == want.item_ids
        assert np.array_equal(np.asarray(got["scores"][i], np.float32), np.asarray(want.scores, np.float32))
        assert bool(got["cold_start"][i]) == want.cold_start


# ------------------------------------------------------------------ batched path (in process)
def test_recommend_frame_equals_recommend_exact_and_hnsw(rec, requests):
    users = requests["user_id"].tolist()
    ctxs = [_context(r) for _, r in requests.iterrows()]
    got = D.recommend_frame(rec, users, ctxs, k=7)
    for u, c, g in zip(users, ctxs, got):
        w = rec.recommend(u, c, k=7)
        assert (g[0], g[1], g[2]) == (w.item_ids, w.scores, w.cold_start)
    # a catalog large enough for the HNSW path (candidate count depends on each user's history)
    ds = planted_dataset(n_users=60, n_items=1200, per_user=12, seed=3)
    big = Recommender(ContextSpec(time=["timestamp"], categorical=["device"]),
                      model=ContextFM(n_factors=8, epochs=2, random_state=0), encoder=None,
                      engine_params={"exact_threshold": 0}).fit(ds)
    assert big.engine_.exact_below() < big.engine_.n_items_  # the graph search serves it
    users = list(big.user_ids_) + ["new-user"]
    ctxs = [{"timestamp": MORNING if i % 2 else NIGHT} for i in range(len(users))]
    for kk in (5, 80):
        got = D.recommend_frame(big, users, ctxs, k=kk)
        for u, c, g in zip(users, ctxs, got):
            w = big.recommend(u, c, k=kk)
            assert (g[0], g[1], g[2]) == (w.item_ids, w.scores, w.cold_start)


# ------------------------------------------------------------------ recommend_all on the cluster
def test_recommend_all_identical_to_single_process(client, rec, model_dir, requests, tmp_path):
    base = {"timestamp": NIGHT}
    res = D.recommend_all(model_dir, tmp_path / "out", users=requests, context=base, k=10, partition_rows=25,
                          client=client, progress=False)
    assert res.rows == len(requests) and res.partitions == 5 and res.workers == 2
    assert (tmp_path / "out" / "_manifest.json").is_file()
    assert {t["worker"] for t in res.tasks} <= set(client.scheduler_info()["workers"])
    got = D.read_recommendations(tmp_path / "out")
    _assert_same(got, rec, requests, 10, base)
    assert got["cold_start"].sum() == 2
    # the model is loaded at most once per worker process, not once per partition
    counts = client.run(lambda: dict(D.LOAD_COUNTS))
    for per_worker in counts.values():
        assert all(v == 1 for key, v in per_worker.items() if key.startswith("model:"))
    assert sum(t["load_s"] > 0 for t in res.tasks) <= 2


def test_recommend_all_with_diversity_and_calibration(client, rec, model_dir, requests, tmp_path):
    opts = {"diversity": 0.7, "calibrate": 2.0, "calibrate_by": "kind"}
    D.recommend_all(model_dir, tmp_path / "out", users=requests, context={"timestamp": NIGHT}, k=10,
                    partition_rows=50, client=client, progress=False, **opts)
    got = D.read_recommendations(tmp_path / "out")
    _assert_same(got, rec, requests, 10, {"timestamp": NIGHT}, **opts)
    plain = [rec.recommend(u, {"timestamp": NIGHT}, k=10).item_ids for u in requests["user_id"]]
    assert [list(x) for x in got["item_ids"]] != plain  # the options changed the lists
    with pytest.raises(Exception, match="calibrate_by"):
        D.recommend_all(model_dir, tmp_path / "bad", users=requests, k=10, client=client, progress=False,
                        calibrate=1.0, calibrate_by="colour")


def test_recommend_all_with_exploration_is_recommend_with_the_seed(client, rec, model_dir, requests, tmp_path):
    opts = {"explore": "thompson", "explore_scale": 2.0, "seed": 9}
    D.recommend_all(model_dir, tmp_path / "out", users=requests, context={"timestamp": NIGHT}, k=10,
                    partition_rows=50, client=client, progress=False, **opts)
    got = D.read_recommendations(tmp_path / "out")
    _assert_same(got, rec, requests, 10, {"timestamp": NIGHT}, **opts)
    plain = [rec.recommend(u, {"timestamp": NIGHT}, k=10).item_ids for u in requests["user_id"]]
    assert [list(x) for x in got["item_ids"]] != plain
    with pytest.raises(Exception, match="explore"):
        D.recommend_all(model_dir, tmp_path / "bad", users=requests, k=10, client=client, progress=False,
                        explore="epsilon")


def test_recommend_all_every_user_shipped_as_bytes(client, rec, tmp_path):
    """users=None: every known user; a Recommender object is saved and broadcast to the workers."""
    # the saved model is byte-identical to model_dir's, which the workers may hold already: forget it
    client.run(lambda: D._REGISTRY.clear())
    res = D.recommend_all(rec, tmp_path / "out", context={"timestamp": MORNING, "device": "mobile"}, k=5,
                          partition_rows=50, ship="bytes", client=client, progress=False)
    assert res.rows == len(rec.user_ids_)
    # the workers loaded the model from the archive they were sent, not from the driver's path
    dirs = client.run(lambda dask_worker: sorted(p.name for p in Path(dask_worker.local_directory).glob("ctxrec-model-*")))
    assert all(dirs[w] for w in {t["worker"] for t in res.tasks} if w in dirs)
    got = D.read_recommendations(tmp_path / "out")
    req = pd.DataFrame({"user_id": list(rec.user_ids_)})
    assert res.rows == len(req)
    _assert_same(got, rec, req, 5, {"timestamp": MORNING, "device": "mobile"})
    with pytest.raises(D.OutputExistsError, match="not empty"):
        D.recommend_all(rec, tmp_path / "out", client=client, progress=False)


class KillOnce(distributed.WorkerPlugin):
    """Kills its worker process (os._exit, like an OOM kill) when a second task of the job
    starts executing there, once per test (a marker file decides which worker dies)."""

    def __init__(self, prefix: str, marker: str) -> None:
        self.prefix, self.marker, self.started = prefix, marker, 0

    def transition(self, key, start, finish, **kwargs):
        name = key if isinstance(key, str) else str(key)
        if finish == "executing" and name.startswith(self.prefix):
            self.started += 1
            if self.started == 2:
                try:
                    fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return
                os.write(fd, f"{os.getpid()} {name}".encode())
                os.close(fd)
                os._exit(1)


@pytest.mark.parametrize("job", ["recommend", "encode"])
def test_worker_killed_mid_job_no_duplicate_or_missing_rows(job, client, rec, model_dir, requests, dataset,
                                                             tmp_path):
    marker = tmp_path / "killed"
    before = set(client.scheduler_info()["workers"])
    client.register_plugin(KillOnce(f"ctxrec-{job}-", str(marker)), name="kill-once")
    try:
        if job == "recommend":
            res = D.recommend_all(model_dir, tmp_path / "out", users=requests, k=10, partition_rows=10,
                                  client=client, progress=False)
        else:
            items = pd.DataFrame({"item_id": list(dataset.item_ids), "text": list(dataset.item_text)})
            res = D.encode_catalog(items, tmp_path / "out", encoder=HashingEncoder, partition_rows=15,
                                   client=client, progress=False)
        after = set(client.scheduler_info()["workers"])
    finally:
        client.unregister_worker_plugin("kill-once")
    assert marker.is_file(), "no worker was killed"
    assert before - after, "the killed worker is still listed"
    n = len(requests) if job == "recommend" else len(dataset.item_ids)
    assert res.partitions == len(res.tasks) == -(-n // (10 if job == "recommend" else 15))
    assert sorted(t["partition"] for t in res.tasks) == list(range(res.partitions))
    assert not list((tmp_path / "out").glob(".part-*"))
    if job == "recommend":
        _assert_same(D.read_recommendations(tmp_path / "out"), rec, requests, 10)
    else:
        ids, emb = D.read_embeddings(tmp_path / "out")
        assert ids.tolist() == list(dataset.item_ids)
        assert np.array_equal(emb, HashingEncoder().encode(list(dataset.item_text)))


# ------------------------------------------------------------------ encode_catalog
def test_encode_catalog_from_parquet_identical(client, dataset, tmp_path):
    items = pd.DataFrame({"item_id": list(dataset.item_ids), "title": list(dataset.item_text)})
    src = tmp_path / "items"
    src.mkdir()
    for i in range(4):  # a Parquet dataset of 4 files -> 4 partitions
        items.iloc[i * 50:(i + 1) * 50].to_parquet(src / f"{i}.parquet")
    res = D.encode_catalog(str(src), tmp_path / "emb", text_col="title", encoder=HashingEncoder, client=client,
                           progress=False)
    assert res.rows == len(items) and res.partitions == 4
    ids, emb = D.read_embeddings(tmp_path / "emb")
    assert ids.tolist() == items["item_id"].tolist()
    assert emb.dtype == np.float32 and np.array_equal(emb, HashingEncoder().encode(items["title"].tolist()))
    mem = D.encode_catalog(items, None, text_col="title", encoder=HashingEncoder, partition_rows=64,
                           client=client, progress=False)
    assert mem.partitions == 4 and np.array_equal(mem.embeddings, emb) and mem.ids.tolist() == ids.tolist()


@pytest.mark.skipif(not (ENCODER_DIR / "manifest.json").is_file(),
                    reason="the ONNX encoder export is not built (run `make models`)")
def test_encode_catalog_real_encoder_once_per_worker_and_cache(client, dataset, tmp_path):
    from ctxrec.encoder import TextEncoder
    texts = [t for t in dataset.item_text][:100] + ["", "a cozy mountain cabin", "a cozy mountain cabin"]
    items = pd.DataFrame({"item_id": range(len(texts)), "text": texts})
    cache = tmp_path / "cache"
    # fp32: a row does not depend on its batch, so the job is bit-identical to one process encoding it all
    res = D.encode_catalog(items, tmp_path / "emb", encoder=ENCODER_DIR, variant="fp32", cache_dir=cache,
                           partition_rows=20, client=client, progress=False)
    assert res.partitions == 6
    _, emb = D.read_embeddings(tmp_path / "emb")
    fp32 = TextEncoder.load(ENCODER_DIR, provider="cpu", variant="fp32", threads=1, lru_size=0)
    assert np.array_equal(emb, fp32.encode(texts))
    counts = client.run(lambda: dict(D.LOAD_COUNTS))
    loads = [v for per in counts.values() for key, v in per.items() if key.startswith("encoder:/") and "fp32" in key]
    assert loads and all(v == 1 for v in loads) and len(loads) <= 2  # once per worker, not per partition
    # a second run reads every text from the shared disk cache, which the single-process encoder also sees
    res2 = D.encode_catalog(items, tmp_path / "emb2", encoder=ENCODER_DIR, variant="fp32", cache_dir=cache,
                            partition_rows=20, client=client, progress=False)
    assert res2.summary()["cache_hits"] == sum(len(set(texts[i:i + 20])) for i in range(0, len(texts), 20))
    assert np.array_equal(D.read_embeddings(tmp_path / "emb2")[1], emb)
    cached = TextEncoder.load(ENCODER_DIR, provider="cpu", variant="fp32", threads=1, cache_dir=cache)
    assert cached.cache_info()["disk_rows"] == len(set(texts))
    assert np.array_equal(cached.encode(texts), emb)
    # int8 (the CPU default) quantizes activations per batch: each partition equals encode() of its own
    # texts exactly; against one global call rows agree to cosine >= 0.95
    res8 = D.encode_catalog(items, None, encoder=ENCODER_DIR, partition_rows=20, client=client, progress=False)
    int8 = TextEncoder.load(ENCODER_DIR, provider="cpu", variant="int8", threads=1, lru_size=0)
    parts = np.concatenate([int8.encode(texts[i:i + 20]) for i in range(0, len(texts), 20)])
    assert np.array_equal(res8.embeddings, parts)
    assert (res8.embeddings * int8.encode(texts)).sum(axis=1).min() >= 0.95


# ------------------------------------------------------------------ CLI
def test_cli_recommend_all_and_encode_catalog(client, rec, model_dir, dataset, tmp_path, capsys):
    from ctxrec.cli import main
    addr = client.scheduler.address
    req = pd.DataFrame({"user_id": ["u1", "u2", "nobody"], "device": ["tv", "mobile", "tv"]})
    req.to_csv(tmp_path / "req.csv", index=False)
    main(["recommend-all", "--model", str(model_dir), "--out", str(tmp_path / "recs"), "--users",
          str(tmp_path / "req.csv"), "--context", f'{{"timestamp": "{MORNING}"}}', "-k", "4",
          "--scheduler", addr, "--no-progress"])
    assert "top-4 for 3 requests" in capsys.readouterr().out
    _assert_same(D.read_recommendations(tmp_path / "recs"), rec, req, 4, {"timestamp": MORNING})
    with pytest.raises(SystemExit) as e:
        main(["recommend-all", "--model", str(model_dir), "--out", str(tmp_path / "recs"), "--scheduler", addr])
    assert e.value.code == 2 and "not empty" in capsys.readouterr().err
    pd.DataFrame({"item_id": ["a", "b"], "text": ["jazz at midnight", "coffee"]}).to_parquet(tmp_path / "i.pq")
    if (ENCODER_DIR / "manifest.json").is_file():
        main(["encode-catalog", "--items", str(tmp_path / "i.pq"), "--out", str(tmp_path / "emb"),
              "--encoder", str(ENCODER_DIR), "--scheduler", addr, "--no-progress"])
        assert "2 texts in 1 partitions" in capsys.readouterr().out
        ids, emb = D.read_embeddings(tmp_path / "emb")
        assert ids.tolist() == ["a", "b"] and emb.shape == (2, 384)
    # the console script is wired (help only: no cluster started)
    p = subprocess.run([sys.executable, "-m", "ctxrec.cli", "recommend-all", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "--scheduler" in p.stdout


def test_recommend_all_unknown_context_refused_or_ignored(client, rec, model_dir, tmp_path, capsys):
    """A context field the model does not read fails the job (naming it) unless ignore_unknown
    is asked for, by the function and by the CLI flag; ignored, the answers are those without it."""
    from ctxrec.cli import main
    users = ["u1", "u2", "nobody"]
    with pytest.raises(Exception, match="weather"):
        D.recommend_all(model_dir, tmp_path / "a", users=users, context={"timestamp": MORNING, "weather": "rain"},
                        k=4, client=client, progress=False)
    D.recommend_all(model_dir, tmp_path / "b", users=users, context={"timestamp": MORNING, "weather": "rain"},
                    k=4, client=client, progress=False, ignore_unknown=True)
    req = pd.DataFrame({"user_id": users})
    _assert_same(D.read_recommendations(tmp_path / "b"), rec, req, 4, {"timestamp": MORNING})
    main(["recommend-all", "--model", str(model_dir), "--out", str(tmp_path / "c"), "-k", "4",
          "--context", f'{{"timestamp": "{MORNING}", "weather": "rain"}}', "--ignore-unknown-context",
          "--scheduler", client.scheduler.address, "--no-progress"])
    got = D.read_recommendations(tmp_path / "c")
    assert len(got) == len(rec.user_ids_)
    want = rec.recommend(got["user_id"][0], {"timestamp": MORNING}, k=4)
    assert list(got["item_ids"][0]) == want.item_ids
