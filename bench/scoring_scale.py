"""What one recommend answer costs as the catalogue grows (Ray-free, the deployed Scorer).

For each catalogue size: the replica's Scorer (increc_ray.serve.scorer) over a model of the
profile's shape with that many items, measured on this machine at one thread (as a replica runs):

- ms per request for exact top-k, one request per forward pass and 16 per pass (the
  Recommender's ``@serve.batch``), split into the encoder and the scan of the item table;
- what adopting a version costs a replica (read the published dict as the object store hands it
  over, out-of-band buffers without a copy, and ``Scorer.from_weights``), for a first version and
  for the next one (1% more items) given the scorer it replaces; baselines in the same run: the
  artifact before (row-major item table, transposed by each replica; vocabulary built whole) and,
  before that, building the transformers model; and the artifact's size;
- the int8 first pass (``serving.index: int8``): quantizing a version's table, ms per request at
  batch 1 and 16, and recall@10 against the exact scan (its answers are ranked by exact scores);
- an ANN index over the item table (faiss IVF, inner product): build time, ms per request and
  recall@10 against exact top-k, at two probe counts.

Baseline measured in the same run: exact top-k at batch 1. Writes bench/results/scoring_scale.json.

    .venv/bin/python bench/scoring_scale.py                       # 10k, 100k, 1M items
    .venv/bin/python bench/scoring_scale.py --items 10000 100000  # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from increc_ray.config import ModelConfig  # noqa: E402
from increc_ray.evaluate.offline import write_result  # noqa: E402
from increc_ray.learn.published import ITEM_KEY, published_array  # noqa: E402
from increc_ray.learn.model import SeqRecModel, left_pad  # noqa: E402
from increc_ray.profiles import load  # noqa: E402
from increc_ray.serve.quantized import Int8Index, Int8Settings  # noqa: E402
from increc_ray.serve.scorer import Scorer  # noqa: E402

HERE = os.path.dirname(__file__)


def timed(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def publish(weights: dict) -> tuple[bytes, list]:
    """``weights`` as the object store holds it: pickle 5 with the arrays' buffers out of band, so
    that reading it back maps them without a copy (what ``ray.get`` does with numpy arrays)."""
    buffers: list = []
    return pickle.dumps(weights, protocol=5, buffer_callback=buffers.append), buffers


def receive(published: tuple[bytes, list]) -> dict:
    blob, buffers = published
    return pickle.loads(blob, buffers=buffers)


def one_size(n_items: int, cfg: ModelConfig, k: int, repeat: int, rng: np.random.Generator,
             candidates: int = 100) -> dict:
    torch.manual_seed(0)
    n_new = max(1, n_items // 100)  # the next version adds 1% new items
    model = SeqRecModel(cfg, capacity=n_items + n_new + 1)
    ids = [f"i{j}" for j in range(n_items + n_new)]

    def artifact(version: int, vocab_ids: list, table_order: str) -> tuple[bytes, list]:
        state = {k_: published_array(k_, v) for k_, v in model.state_dict().items()}
        if table_order == "C":  # the artifact before (row-major table)
            state[ITEM_KEY] = np.ascontiguousarray(state[ITEM_KEY])
        return publish({"version": version, "model_config": cfg.model_dump(), "vocab": vocab_ids, "state_dict": state})

    first, second, before = artifact(1, ids[:n_items], "F"), artifact(2, ids, "F"), artifact(1, ids[:n_items], "C")
    first_version = first
    t = time.perf_counter()
    scorer = Scorer.from_weights(receive(first))
    adopt_s = time.perf_counter() - t
    t = time.perf_counter()
    Scorer.from_weights(receive(second), previous=scorer)
    adopt_next_s = time.perf_counter() - t
    # the baselines, in the same run: the artifact and adoption before (a row-major table the
    # replica transposed, a vocabulary built whole), and before that, building the transformers model
    t = time.perf_counter()
    Scorer.from_weights(receive(before))
    adopt_before_s = time.perf_counter() - t
    t = time.perf_counter()
    got = receive(before)
    old_model = SeqRecModel(cfg, capacity=n_items + n_new + 1)
    old_model.load_state_dict({k_: torch.as_tensor(v) for k_, v in got["state_dict"].items()})
    old_model.eval()
    adopt_model_s = time.perf_counter() - t
    published_bytes = len(first[0]) + sum(memoryview(b).nbytes for b in first[1])
    histories = [[f"i{j}" for j in rng.integers(0, n_items, size=cfg.max_len)] for _ in range(64)]
    hist16 = histories[:16]

    b1 = timed(lambda: scorer.recommend(histories[0], k, histories[0]), repeat)
    b16 = timed(lambda: scorer.recommend_batch(hist16, k, hist16), max(3, repeat // 4)) / 16
    seqs = [scorer.vocab.lookup(h) for h in hist16]
    with torch.inference_mode():
        enc1 = timed(lambda: scorer.encoder(left_pad(seqs[:1])), repeat)
        enc16 = timed(lambda: scorer.encoder(left_pad(seqs)), max(3, repeat // 4)) / 16
        model1 = timed(lambda: old_model(left_pad(seqs[:1]))[:, -1], repeat)
        model16 = timed(lambda: old_model(left_pad(seqs))[:, -1], max(3, repeat // 4)) / 16
        hidden = scorer.encoder(left_pad([scorer.vocab.lookup(h) for h in histories])).numpy().copy()
    table = scorer.table_t[:, 1: n_items + 1].t().contiguous().numpy()
    exact = np.argsort(-(hidden @ table.T), axis=1)[:, :k]
    row = {"items": n_items, "d_model": cfg.d_model,
           "table_mib": round(table.nbytes / 2**20, 1), "published_mib": round(published_bytes / 2**20, 1),
           "bytes_per_item_in_replica": int(table.shape[1] * 4 + 2 * 64),  # a row plus its id in the vocab
           "adopt_version_s": round(adopt_s, 3),
           "adopt_next_version_s": round(adopt_next_s, 3),  # 1% more items, given the scorer it replaces
           "adopt_before": {"adopt_version_s": round(adopt_before_s, 3)},  # row-major table, vocab built whole
           "adopt_next_speedup": round(adopt_before_s / adopt_next_s, 2),
           "exact_ms_batch1": round(b1 * 1e3, 2), "exact_ms_per_request_batch16": round(b16 * 1e3, 2),
           "encoder_ms_batch1": round(enc1 * 1e3, 2), "encoder_ms_per_request_batch16": round(enc16 * 1e3, 2),
           "baseline_model": {"adopt_version_s": round(adopt_model_s, 3), "encoder_ms_batch1": round(model1 * 1e3, 2),
                              "encoder_ms_per_request_batch16": round(model16 * 1e3, 2)},
           "encoder_speedup_batch1": round(model1 / enc1, 2), "encoder_speedup_batch16": round(model16 / enc16, 2),
           "adopt_speedup": round(adopt_model_s / adopt_s, 2)}
    row["batch16_speedup"] = round(b1 / b16, 2)
    # serving.index int8: the quantized first pass, its best rows ranked by their exact scores
    index8 = Int8Index(Int8Settings(min_items=0, candidates=candidates))
    t = time.perf_counter()
    first = Scorer.from_weights(receive(first_version), index8)
    quantize_s = time.perf_counter() - t
    q1 = timed(lambda: first.recommend(histories[0], k, histories[0]), repeat)
    q16 = timed(lambda: first.recommend_batch(hist16, k, hist16), max(3, repeat // 4)) / 16
    want = scorer.recommend_batch(histories, k, histories)
    got = first.recommend_batch(histories, k, histories)
    row["int8"] = {"candidates": candidates, "adopt_version_s": round(quantize_s, 3),
                   "ms_batch1": round(q1 * 1e3, 2), "ms_per_request_batch16": round(q16 * 1e3, 2),
                   "speedup_batch1": round(b1 / q1, 2), "speedup_batch16": round(b16 / q16, 2),
                   "recall@10": round(float(np.mean([len({i for i, _ in g} & {i for i, _ in w}) / k
                                                     for g, w in zip(got, want)])), 3)}
    try:
        import faiss
    except ImportError:
        row["ann"] = "faiss not installed (pip install faiss-cpu)"
        return row
    faiss.omp_set_num_threads(1)
    nlist = max(16, int(4 * np.sqrt(n_items)))
    quant = faiss.IndexFlatIP(cfg.d_model)
    index = faiss.IndexIVFFlat(quant, cfg.d_model, nlist, faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    train = table[rng.choice(n_items, size=min(n_items, 40 * nlist), replace=False)]
    index.train(np.ascontiguousarray(train))
    index.add(np.ascontiguousarray(table))
    build_s = time.perf_counter() - t
    row["ann"] = {"index": f"IVF{nlist},Flat", "build_s": round(build_s, 2), "probes": []}
    for nprobe in (8, 32):
        index.nprobe = nprobe
        q1 = np.ascontiguousarray(hidden[:1])
        ms1 = timed(lambda: index.search(q1, k), repeat) * 1e3
        _, got = index.search(np.ascontiguousarray(hidden), k)
        recall = float(np.mean([len(set(got[i]) & set(exact[i])) / k for i in range(len(hidden))]))
        row["ann"]["probes"].append({"nprobe": nprobe, "ms_batch1": round(ms1, 3),
                                     "ms_with_encoder_batch1": round(ms1 + enc1 * 1e3, 2),
                                     "recall@10": round(recall, 3),
                                     "speedup_vs_exact_batch1": round(b1 * 1e3 / (ms1 + enc1 * 1e3), 2)})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--profile", default="ml-100k", help="model shape from deploy/profiles/NAME.yaml")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "scoring_scale.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # a replica's setting (Recommender.__init__)
    cfg = load(profile=args.profile).model
    rng = np.random.default_rng(0)
    rows = []
    for n in args.items:
        row = one_size(n, cfg, args.k, args.repeat, rng)
        rows.append(row)
        print(json.dumps(row))
    out = {"bench": "scoring_scale", "profile": args.profile, "k": args.k, "threads": 1,
           "baseline": "exact top-k at batch 1, same run", "sizes": rows}
    print(f"wrote {write_result(out, os.path.dirname(args.out), os.path.basename(args.out))}")


if __name__ == "__main__":
    main()
