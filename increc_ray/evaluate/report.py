"""README tables generated from the committed result files (``bench/results/``).

A README region between ``<!-- table:NAME -->`` and ``<!-- /table -->`` is the output of
``TABLES[NAME]`` on the result files; ``tests/test_readme.py`` checks that every region matches,
and ``python -m increc_ray.evaluate.report README.md`` rewrites them after a benchmark run.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Callable

RESULTS = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "results")
LIVE_FILES = ("live_ml-100k.json", "live_ml-latest-small.json", "live_ml-100k-fresh.json",
              "live_ml-latest-small-fresh.json")
BURST_FILES = ("burst_ml-100k_60000.json", "burst_ml-100k-fresh_60000.json")
K = 10


def _load(name: str, results: str) -> dict | None:
    path = os.path.join(results, name)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def harness_vs_live(results: str = RESULTS) -> str:
    """One row per dataset: the harness's ``incremental`` and the deployed system over HTTP, on
    the same file, split and profile (from ``live_<dataset>.json``, which holds both)."""
    nd, hr = f"ndcg@{K}", f"hr@{K}"
    rows = ["| dataset (profile) | harness `incremental` NDCG@10 (HR@10) | live over HTTP NDCG@10 ± se (HR@10) "
            "| popularity, same events | live / harness | live / popularity | versions served (found worse) "
            "| burst → caught up |",
            "|---|---|---|---|---|---|---|---|"]
    for name in LIVE_FILES:
        res = _load(name, results)
        if res is None:
            continue
        h, lv, pp, ra = res.get("harness") or {}, res["live"], res["popularity"], res["ratios"]
        gate = res.get("gate") or {}
        worse = gate.get("served_then_found_worse")
        served = res["versions_served"]["distinct"]
        profile = ((res.get("target") or {}).get("app_args") or {}).get("profile") or "-"
        rows.append(
            f"| {res['dataset']} ({profile}) | {_f(h.get(nd))} ({_f(h.get(hr), 3)}) "
            f"| {_f(lv[nd])} ± {_f(lv[nd + '_se'])} ({_f(lv[hr], 3)}) | {_f(pp[nd])} ({_f(pp[hr], 3)}) "
            f"| {_f(ra['live_over_harness_ndcg'], 2)} | {_f(ra['live_over_popularity_ndcg'], 2)} "
            f"| {served} ({'-' if worse is None else len(worse)}) "
            f"| {res['burst_seconds']:.0f} s + {res['wait_until_caught_up_seconds']:.0f} s |")
    return "\n".join(rows)


def burst_check(results: str = RESULTS) -> str:
    """The burst check (``bench/live_replay.py --burst N``): HR@10 on each user's next new item."""
    rows = ["| burst | users probed | live HR@10 ± se | popularity HR@10 | live / popularity "
            "| caught up after last POST | probes done after last POST | answers from the model |",
            "|---|---|---|---|---|---|---|---|"]
    for name in BURST_FILES:
        b = _load(name, results)
        if b is None:
            continue
        caught = f"{b['seconds_from_last_post_to_caught_up']:.0f} s" if b["caught_up"] else "not within the deadline"
        rows.append(f"| {b['dataset']}, first {b['burst_events']:,} events | {b['users_probed']} "
                    f"| {_f(b['live'][f'hr@{K}'])} ± {_f(b['live'][f'hr@{K}_se'])} | {_f(b['popularity'][f'hr@{K}'])} "
                    f"| {_f(b['live_over_popularity_hr'], 2)} | {caught} "
                    f"| {b['seconds_from_last_post_to_probes_done']:.0f} s | {b['source_share'].get('model', 0):.0%} |")
    return "\n".join(rows)


CONSOLIDATE_FILES = ("stream_ml-100k_consolidate.json", "stream_ml-latest-small_consolidate.json")


def consolidation(results: str = RESULTS) -> str:
    """Pure incremental against incremental plus a full pass every N events (the harness)."""
    runs = [r for r in (_load(n, results) for n in CONSOLIDATE_FILES) if r]
    names = sorted({s for r in runs for s in r["strategies"] if s.startswith("incremental")},
                   key=lambda s: (s != "incremental", int(s.split("[")[1].rstrip("]")) if "[" in s else 0))
    rows = ["| strategy | " + " | ".join(f"{r['dataset'].removesuffix('_consolidate')} NDCG@10 | update CPU s" for r in runs) + " |",
            "|---|" + "---|---|" * len(runs)]
    for name in names:
        cells = []
        for r in runs:
            st = r["strategies"].get(name)
            cells += [_f(st and st[f"ndcg@{K}"]), "-" if not st else f"{st['update_seconds']:.0f}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


FAULT_LOG = "faults.jsonl"


def reliability(results: str = RESULTS) -> str:
    """The fault and fuzz trials (``INCREC_FAULT_LOG=bench/results/faults.jsonl pytest
    tests/serve/test_faults.py tests/serve/test_fuzz.py``), summed per fault; "ledger" says
    whether ``received = applied + quarantined + duplicates + pending`` held after every trial."""
    path = os.path.join(results, FAULT_LOG)
    rows = ["| fault or fuzzer | trials | events or inputs | events lost | applied twice | failed requests (retried) "
            "| degraded answers | ledger balanced | 5xx |",
            "|---|---|---|---|---|---|---|---|---|"]
    if not os.path.exists(path):
        return "\n".join(rows)
    by: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                t = json.loads(line)
                agg = by.setdefault(t["fault"], {})
                for key in ("trials", "events", "inputs", "lost", "applied_twice", "failed_requests",
                            "degraded_answers", "server_errors"):
                    if t.get(key) is not None:
                        agg[key] = agg.get(key, 0) + t[key]
                if t.get("ledger_balanced") is not None:
                    agg["ledger"] = agg.get("ledger", True) and bool(t["ledger_balanced"])
    for fault, a in by.items():
        cell = lambda key: "-" if key not in a else f"{a[key]:,}"
        ledger = "-" if "ledger" not in a else ("yes" if a["ledger"] else "**no**")
        rows.append(f"| {fault} | {cell('trials')} | {cell('events') if 'events' in a else cell('inputs')} "
                    f"| {cell('lost')} | {cell('applied_twice')} | {cell('failed_requests')} "
                    f"| {cell('degraded_answers')} | {ledger} | {cell('server_errors')} |")
    return "\n".join(rows)


SERVE_LOAD_FILES = ("serve_load_10k.json", "serve_load_10k_profile64.json", "serve_load_10k_batchwait2ms.json",
                    "serve_load_10k_batchwait0.json", "serve_load_1m.json", "serve_load_1m_overlay.json",
                    "serve_load_1m_int8.json", "serve_load_1m_snapshots.json", "serve_load_1m_catchup.json",
                    "serve_load_1m_plain.json", "serve_load_1m_int8_follow.json", "serve_load_1m_archive.json",
                    "serve_load_1m_archive_run2.json", "serve_load_1m_ckpt_baseline.json",
                    "serve_load_1m_ckpt_thread.json", "serve_load_1m_ckpt_thread_run2.json")


def serve_load(results: str = RESULTS) -> str:
    """``bench/serve_load.py``: do-nothing vs /recommend behind one ingress, in one run, per wrk point."""
    rows = ["| catalogue | ingress | connections | do-nothing req/s | /recommend req/s | p50 / p99 ms | ratio "
            "| answers per forward pass |", "|---|---|---|---|---|---|---|---|"]
    for name in SERVE_LOAD_FILES:
        r = _load(name, results)
        if r is None or "throughput" not in r:
            continue
        for w in r["throughput"]["sweep"]:
            rec = w["recommend"]
            batch = w.get("mean_batch")  # recorded since the replicas count their batches
            rows.append(f"| {r['setup']['n_items']:,} items | {r['ingress']} | {w['connections']} | {w['noop']['rps']:.0f} "
                        f"| {rec['rps']:.0f} | {rec['p50_ms']:.0f} / {rec['p99_ms']:.0f} | {w['ratio_rps']:.2f} "
                        f"| {batch if batch is not None else '-'} |")
    return "\n".join(rows)


# serve_load runs behind README's goal table: (file, what the run was)
SERVE_GOAL_RUNS = (("serve_load_10k.json", "load"), ("serve_load_10k_freshness.json", "freshness"),
                   ("serve_load_10k_optimistic.json", "freshness, gate optimistic"),
                   ("serve_load_10k_fresh.json", "freshness, profile ml-100k-fresh"),
                   ("serve_load_10k_fresh_throughput.json", "load, profile ml-100k-fresh"),
                   ("serve_load_10k_large-catalogue.json", "freshness, profile large-catalogue with 1,024 negatives"),
                   ("serve_load_1m.json", "all phases, profile large-catalogue, gate off"),
                   ("serve_load_1m_overlay.json", "load and profile (the run stopped after them), profile "
                                                  "large-catalogue, gate off, overlay versions"),
                   ("serve_load_1m_int8.json", "all phases, profile large-catalogue, gate off, overlay versions, "
                                               "int8 first pass"),
                   ("serve_load_1m_snapshots.json", "all phases, as the int8 run, new history copies sharing a snapshot"),
                   ("serve_load_1m_catchup.json", "all phases, as the snapshots run, the trainer publishing at most "
                                                  "every 2 s while catching up, degraded answers from the history copy"),
                   ("serve_load_1m_ready.json", "swaps only, as the catch-up run, a replica taking requests only once "
                                                "it holds a fallback (a history copy or the popular list)"),
                   ("serve_load_1m_plain.json", "all phases, as the catch-up run, replicas ready only with a fallback, "
                                                "plain recommend calls past FastAPI"),
                   ("serve_load_1m_int8_follow.json", "all phases, as the plain run, each new int8 base built from "
                                                      "the last"),
                   ("serve_load_1m_archive.json", "all phases, as the int8-follow run, the rollback archive keeping "
                                                  "each base once"),
                   ("serve_load_1m_archive_run2.json", "all phases, as the archive run (run 2)"),
                   ("serve_load_1m_ckpt_baseline.json", "all phases, as the archive run, on this session's machine "
                                                        "(the baseline of the next)"),
                   ("serve_load_1m_ckpt_thread.json", "all phases, as the archive run, checkpoints written by a thread"),
                   ("serve_load_1m_ckpt_thread_run2.json", "all phases, as the checkpoint-thread run (run 2)"),
                   ("serve_load_1m_rates.json", "freshness only, then at 50, 20 and 0 events/s too (`freshness-rates`), "
                                                "as the checkpoint-thread run"),
                   ("serve_load_1m_rates_int8_shared.json", "as the rates run, each int8 base quantized once by the "
                                                            "registry"),
                   ("serve_load_10k_rates.json", "freshness only, then at 300, 20 and 0 events/s too (`freshness-rates`), "
                                                 "profile ml-100k-fresh"),
                   ("serve_load_10k_inline_clean_run1.json", "freshness, profile ml-100k-fresh, small passes cleaned inline"),
                   ("serve_load_10k_inline_clean_run3.json", "freshness, profile ml-100k-fresh, small passes cleaned inline"),
                   ("serve_load_10k_inline_clean_throughput.json", "load, profile ml-100k-fresh, small passes cleaned inline"),
                   ("serve_load_10k_job_clean_throughput.json", "load, profile ml-100k-fresh, every pass a Ray Data job"),
                   ("serve_load_10k_batchwait2ms.json", "load, profile ml-100k-fresh with batch_wait_s 2 ms (the default then)"),
                   ("serve_load_10k_batchwait0.json", "load, profile ml-100k-fresh with batch_wait_s 0"))


def _goal_rows(results: str) -> list[dict]:
    """Each of issue 13's goals in each run of ``SERVE_GOAL_RUNS``: {goal, run, measured, target, met
    (None: not a goal at this size), large (a 1M-item run), value (the figure, or None)}."""
    out = []
    for name, label in SERVE_GOAL_RUNS:
        r = _load(name, results)
        if r is None:
            continue
        rate = (r.get("model_freshness") or {}).get("event_rate")
        run = f"`{name}`: {label}, {r['setup']['n_items']:,} items" + (f", {rate:.0f}/s" if rate else "")
        large = r["items"] >= 500_000  # the goals: 0.7x at 10k items, 0.5x at 1M

        def row(goal: str, measured: str, target: str, met: bool | None, value: float | None = None,
                fmt: str = "{}", what: str = "") -> None:
            out.append({"goal": goal, "run": run, "measured": measured, "target": target, "met": met,
                        "large": large, "value": value, "fmt": fmt, "what": what})

        if t := r.get("throughput"):
            sat = t["saturation_rps"]
            row("throughput / do-nothing at saturation", f"{t['ratio_at_saturation']:.2f} ({sat['recommend']:.0f} / "
                f"{sat['noop']:.0f} req/s)", ">= 0.5" if large else ">= 0.7",
                t["ratio_at_saturation"] >= (0.5 if large else 0.7), t["ratio_at_saturation"], "{:.2f}")
            half = t["half_saturation"]
            row("p99 at half saturation", f"{half['p99_ms']:.0f} ms ({half['connections']} connections, "
                f"{half['rps']:.0f} req/s)", "< 50 ms (a 10k-item goal)" if large else "< 50 ms",
                None if large else half["p99_ms"] < 50, half["p99_ms"], "{:.0f} ms")
            share = t["model_share"]
            row("answers from the model, users with history", f"{share['model_share']:.1%} of {share['answers']}",
                ">= 99%", share["model_share"] >= 0.99, share["model_share"], "{:.1%}")
        if h := r.get("history_freshness"):
            row("history freshness: next answer reflects the POST", f"{h['reflected']} of {h['trials']} "
                f"({len(h['answers_per_replica'])} replicas)", "100%", h["reflected"] == h["trials"],
                h["reflected"] / h["trials"], "{:.0%}")
        if m := r.get("model_freshness"):
            if "p50_s" in m:
                row("model freshness: event to a live version that learned it, on every replica",
                    f"p50 {m['p50_s']} s, p99 {m['p99_s']} s ({m['trials'] - m['timeouts']} of {m['trials']} trials)",
                    "p50 < 1 s, p99 < 3 s", m["p50_s"] < 1 and m["p99_s"] < 3 and not m["timeouts"],
                    m["p99_s"], "{:.1f} s", "p99 ")
            else:
                row("model freshness: event to a live version that learned it, on every replica",
                    f"no trial finished ({m['timeouts']} timeouts; trainer unread events "
                    f"{m.get('trainer_unread_events')})", "p50 < 1 s, p99 < 3 s", False)
        if w := r.get("swaps"):
            counts = [x["replicas"] for x in w["timeline"]]
            published = (f"{w['published_during']} versions published" if "published_during" in w
                         else f"{w['versions_seen']} versions answered")  # a run whose last /status timed out
            row("failed requests during swaps and scaling", f"{w['failed']} of {w['requests']:,} "
                f"({published}, replicas {min(counts)} -> {max(counts)} -> {counts[-1]})", "0", w["failed"] == 0,
                w["failed"], "{:,}")
            if w.get("swap_p99_ratio") is not None:
                row("p99 during swaps / between them", f"{w['swap_p99_ratio']:.2f}x ({w['p99_ms_during_swaps']:.0f} / "
                    f"{w['p99_ms_between_swaps']:.0f} ms; longest stall {w['longest_stall_ms']:.0f} ms)", "<= 2x",
                    w["swap_p99_ratio"] <= 2, w["swap_p99_ratio"], "{:.2f}x")
    return out


def serve_goals(results: str = RESULTS) -> str:
    """``bench/serve_load.py``: each of issue 13's goals against what the runs measured."""
    rows = ["| goal | run (events/s posted meanwhile) | measured | target | met |", "|---|---|---|---|---|"]
    for g in _goal_rows(results):
        met = g["met"]
        rows.append(f"| {g['goal']} | {g['run']} | {g['measured']} | {g['target']} | "
                    f"{'-' if met is None else 'yes' if met else 'no'} |")
    return "\n".join(rows)


def serve_goals_summary(results: str = RESULTS) -> str:
    """``serve-goals`` by goal and catalogue: how many of the committed runs measured it, how many met
    it, and the range of what they measured (every run counts, the early ones included)."""
    rows = ["| goal | catalogue | target | runs | met in | measured, lowest - highest |", "|---|---|---|---|---|---|"]
    groups: dict[tuple[str, bool], list[dict]] = {}
    for g in _goal_rows(results):
        groups.setdefault((g["goal"], g["large"]), []).append(g)
    for (goal, large), gs in groups.items():
        if all(g["met"] is None for g in gs):
            continue
        measured = [g for g in gs if g["value"] is not None]
        if measured:
            lo, hi = min(g["value"] for g in measured), max(g["value"] for g in measured)
            fmt = measured[0]["fmt"]
            measured = measured[0]["what"] + (fmt.format(lo) if lo == hi else f"{fmt.format(lo)} - {fmt.format(hi)}")
        else:
            measured = "-"
        unfinished = sum(g["value"] is None for g in gs)
        if unfinished:
            measured += f"; {unfinished} with no trial finished"
        rows.append(f"| {goal} | {'1M' if large else '10k'} items | {gs[0]['target']} | {len(gs)} "
                    f"| {sum(bool(g['met']) for g in gs)} | {measured} |")
    return "\n".join(rows)


# serve_load runs with ``--model-rates``: model freshness at several posting rates in one deployment
FRESHNESS_RATE_FILES = ("serve_load_10k_rates.json", "serve_load_1m_rates.json", "serve_load_1m_rates_int8_shared.json")


def _range(xs: list) -> str:
    xs = [x for x in xs if x is not None]
    return "-" if not xs else f"{min(xs):,}" if min(xs) == max(xs) else f"{min(xs):,}-{max(xs):,}"


def freshness_rates(results: str = RESULTS) -> str:
    """``bench/serve_load.py --model-rates``: model freshness against the events/s posted meanwhile,
    each rate's trials in the same deployment, with each stage's p50 from the POST's answer."""
    rows = ["| run | catalogue | profile | events/s posted | trials finished | trainer unread events at the trials "
            "| p50 / p99 s | stages p50 s: cleaned / read / live / on every replica | p50 < 1 s, p99 < 3 s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in FRESHNESS_RATE_FILES:
        r = _load(name, results)
        if r is None:
            continue
        for m in [r["model_freshness"], *r.get("model_freshness_by_rate", [])]:
            done = m["trials"] - m["timeouts"]
            if "p50_s" in m:
                st = m["stages_p50_s"]
                times = f"{m['p50_s']:.2f} / {m['p99_s']:.2f}"
                stages = " / ".join(f"{st[k]:.2f}" for k in ("cleaned", "read", "live", "on_every_replica"))
                met = "yes" if m["p50_s"] < 1 and m["p99_s"] < 3 and not m["timeouts"] else "no"
            else:
                times, stages, met = "-", "-", "no"
            rows.append(f"| `{name}` | {r['setup']['n_items']:,} items | {r['profile']} | {m['event_rate']:.0f} | {done} of "
                        f"{m['trials']} | {_range(m.get('trainer_unread_events', []))} | {times} | {stages} | {met} |")
    return "\n".join(rows)


def hot_path(results: str = RESULTS) -> str:
    """``bench/serve_load.py --phases profile``: CPU ms per answered request, by process."""
    rows = ["| process | do-nothing route | /recommend |", "|---|---|---|"]
    for name in SERVE_LOAD_FILES:
        r = _load(name, results)
        if r is None or not isinstance(r.get("profile"), dict):  # "profile" is the phase, or else the profile's name
            continue
        if (r.get("throughput") or {}).get("model_share", {}).get("model_share", 1.0) < 0.99:
            continue  # mostly fallback answers: not what a recommend answer costs
        noop, rec = r["profile"]["noop"], r["profile"]["recommend"]
        rows.append(f"| **{r['setup']['n_items']:,} items** (requests per second, {rec['result']['connections']} "
                    f"connections) | {noop['result']['rps']:.0f} | {rec['result']['rps']:.0f} |")
        groups = sorted(set(noop["cpu_ms_per_request"]) | set(rec["cpu_ms_per_request"]),
                        key=lambda g: (-rec["cpu_ms_per_request"].get(g, 0), g))  # ties by name: stable across runs
        for g in groups:
            a, b = noop["cpu_ms_per_request"].get(g), rec["cpu_ms_per_request"].get(g)
            if max(a or 0, b or 0) >= 0.05:
                rows.append(f"| {g} | {_f(a, 2) if a is not None else '-'} | {_f(b, 2) if b is not None else '-'} |")
        rows.append(f"| all | {sum(noop['cpu_ms_per_request'].values()):.2f} | {sum(rec['cpu_ms_per_request'].values()):.2f} |")
    return "\n".join(rows)


def state_size(results: str = RESULTS) -> str:
    """``bench/state_size.py``: user-history memory with and without expiry, bytes per item."""
    r = _load("state_size.json", results)
    rows = ["| structure | without expiry | with expiry | |", "|---|---|---|---|"]
    if r is None:
        return "\n".join(rows)
    a, b, st = r["history_without_expiry"], r["history_with_expiry"], r["stream"]
    rows += [f"| user history, {a['events']:,} events of {st['users']:,} users over {st['days']} days "
             f"(each active {st['active_days_per_user']} days) | {a['mib']} MiB, {a['users_kept']:,} users "
             f"| {b['mib']} MiB, {b['users_kept']:,} users (ttl {b['ttl_days']:.0f} days) "
             f"| {r['expiry_memory_ratio']:.2f}x |",
             f"| ... per kept user | {a['bytes_per_kept_user']:,} B | {b['bytes_per_kept_user']:,} B | |",
             f"| ... dedup keys kept | {a['dedup_keys_kept']:,} | {b['dedup_keys_kept']:,} | |",
             f"| item id in a vocabulary | {r['vocab_bytes_per_item']} B | | |",
             *_learner_state_rows(r),
             f"| item row (d_model {r['item_row_bytes']['d_model']}): replica / trainer with AdamW "
             f"| {r['item_row_bytes']['replica']} B / {r['item_row_bytes']['trainer_with_adamw']} B | | |"]
    return "\n".join(rows)


def _learner_state_rows(r: dict) -> list[str]:
    """The trainer's side of ``state_size`` (absent from results written before it existed)."""
    a, b = r.get("learner_without_expiry"), r.get("learner_with_expiry")
    if a is None or b is None:
        return []
    ratio = r["learner_expiry_ratio"]
    return [f"| trainer: item rows (vocabulary and table) | {a['item_rows']:,} | {b['item_rows']:,} "
            f"({b['items_live']:,} live, the rest holes for new items) | {ratio['item_rows']:.2f}x |",
            f"| ... table capacity, with AdamW's moments | {a['table_capacity']:,} rows, {a['table_and_adamw_mib']} MiB "
            f"| {b['table_capacity']:,} rows, {b['table_and_adamw_mib']} MiB | |",
            f"| ... users kept, items in their sequences | {a['users_kept']:,}, {a['sequence_items_kept']:,} "
            f"| {b['users_kept']:,}, {b['sequence_items_kept']:,} | {ratio['sequence_items']:.2f}x |"]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def scoring_scale(results: str = RESULTS) -> str:
    """``bench/scoring_scale.py``: the Scorer's cost per answer and per version as the catalogue grows,
    against the transformers model it replaced (measured in the same run)."""
    r = _load("scoring_scale.json", results)
    rows = ["| items | exact top-10, batch 1 | per request, batch 16 | encoder, batch 1 (transformers model) "
            "| encoder per request, batch 16 (model) | adopt a first version (model) "
            "| adopt the next version (before) | published MiB "
            "| int8 first pass: batch 1 / per request at 16 (recall@10; quantizing) "
            "| ANN (faiss IVF) recall@10 at nprobe 8 / 32 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in (r or {}).get("sizes", []):
        ann = s["ann"]
        recall = " / ".join(_f(p["recall@10"], 2) for p in ann["probes"]) if isinstance(ann, dict) else "not run"
        base = s.get("baseline_model", {})
        q = s.get("int8")
        int8 = (f"{q['ms_batch1']} / {q['ms_per_request_batch16']} ms ({_f(q['recall@10'], 3)}; "
                f"{_ms(q['adopt_version_s'])})") if q else "not run"
        rows.append(f"| {s['items']:,} | {s['exact_ms_batch1']} ms | {s['exact_ms_per_request_batch16']} ms "
                    f"| {s['encoder_ms_batch1']} ms ({base.get('encoder_ms_batch1', '-')} ms) "
                    f"| {s['encoder_ms_per_request_batch16']} ms ({base.get('encoder_ms_per_request_batch16', '-')} ms) "
                    f"| {s['adopt_version_s'] * 1000:.0f} ms ({base.get('adopt_version_s', 0) * 1000:.0f} ms) "
                    f"| {_ms(s.get('adopt_next_version_s'))} ({_ms(s.get('adopt_before', {}).get('adopt_version_s'))}) "
                    f"| {s['published_mib']} | {int8} | {recall} |")
    return "\n".join(rows)


def checkpoint_scale(results: str = RESULTS) -> str:
    """``bench/checkpoint_scale.py``: a trainer checkpoint's cost, and what of it the loop waits for."""
    r = _load("checkpoint_scale.json", results)
    rows = ["| items | checkpoint | whole checkpoint (the loop waited, before) | the loop's snapshot now | "
            "the thread's write | one update alone / during a write | updates between checkpoints "
            f"(checkpoint_max_share {(r or {}).get('checkpoint_max_share', 0.1)}) | the loop's share, before -> now |",
            "|---|---|---|---|---|---|---|---|"]
    for s in (r or {}).get("sizes", []):
        rows.append(f"| {s['items']:,} | {s['checkpoint_mib']:,} MiB | {s['checkpoint_s']} s | {s['loop_s']} s "
                    f"({s['loop_speedup']}x less) | {s['write_s']} s | {s['update_s']} / {s['update_while_writing_s']} s "
                    f"| {s['updates_between_checkpoints_with_bound']} | {s['loop_share_before']:.1%} -> "
                    f"{s['loop_share_now']:.1%} |")
    return "\n".join(rows)


def trainer_scale(results: str = RESULTS) -> str:
    """``bench/trainer_scale.py``: an update's cost as the catalogue grows, ``trainer.loss: full``
    against ``sampled`` (measured in the same run), and the whole-table work left per update."""
    r = _load("trainer_scale.json", results)
    rows = ["| items | full: s per update (events/s) | sampled: s per update (events/s) | sampled / full events/s "
            "| left per update with sampled: negatives' distribution / gate snapshot / online metric |",
            "|---|---|---|---|---|"]
    for run in (r or {}).get("runs", []):
        full, sampled, left = run["full"], run["sampled"], run["sampled_table_passes_per_update"]
        ms = " / ".join("-" if k not in left else f"{left[k] * 1000:.0f} ms"
                        for k in ("negatives_rebuild_s", "gate_snapshot_s", "evaluate_next_s"))
        rows.append(f"| {run['items']:,} | {full['seconds_per_update']:.3f} ({full['events_per_s']:,.0f}) "
                    f"| {sampled['seconds_per_update']:.3f} ({sampled['events_per_s']:,.0f}) "
                    f"| {run['ratio_events_per_s_sampled_over_full']}x | {ms} |")
    return "\n".join(rows)


LOOP_PARTS = ("gate_test_s", "online_metric_s", "finite_s", "gate_snapshot_s", "export_weights_s")


def trainer_loop(results: str = RESULTS) -> str:
    """``bench/trainer_scale.py``: the deployed loop's work around a sampled update, per update,
    before this work on it (``trainer_scale_before.json``) and now (``trainer_scale.json``)."""
    before, after = _load("trainer_scale_before.json", results), _load("trainer_scale.json", results)
    rows = ["| items | update | gate scoring of a slice | online metric | NaN check | candidate snapshot "
            "| export_weights | loop per update (update included) |", "|---|---|---|---|---|---|---|---|"]
    old = {run["items"]: run["sampled"] for run in (before or {}).get("runs", [])}
    for run in (after or {}).get("runs", []):
        new, was = run["sampled"], old.get(run["items"])
        if was is None or "loop_per_update" not in new:
            continue
        cells = [f"{was[k] * 1000:,.0f} -> {new[k] * 1000:,.0f} ms"
                 for k in ("seconds_per_update",)]
        cells += [f"{was['loop_per_update'][k] * 1000:,.0f} -> {new['loop_per_update'][k] * 1000:,.0f} ms"
                  for k in LOOP_PARTS]
        cells.append(f"{was['loop_seconds_per_update']:.2f} -> {new['loop_seconds_per_update']:.2f} s")
        rows.append(f"| {run['items']:,} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


SAMPLED_FILES = {"ml-100k": ("stream_ml-100k_loss-full.json", "stream_ml-100k_loss-sampled.json",
                             "stream_ml-100k_loss-sampled-uniform.json", "stream_ml-100k_loss-sampled-k128.json",
                             "stream_ml-100k_loss-sampled-k128-uniform.json"),
                 "ml-latest-small": ("stream_ml-latest-small_loss-full.json", "stream_ml-latest-small_loss-sampled.json",
                                     "stream_ml-latest-small_loss-sampled-uniform.json",
                                     "stream_ml-latest-small_loss-sampled-k4096.json",
                                     "stream_ml-latest-small_loss-sampled-inbatch.json",
                                     "stream_ml-latest-small_loss-sampled-k4096-inbatch.json")}


def sampled_quality(results: str = RESULTS) -> str:
    """The prequential replay of each dataset under each loss (warm-up and updates alike), against
    the same dataset's full-softmax run (the first file of its group)."""
    nd, hr = f"ndcg@{K}", f"hr@{K}"
    rows = ["| file | items | loss (negatives, power) | static NDCG@10 | incremental NDCG@10 (HR@10) "
            "| incremental / full's | popularity NDCG@10 | update CPU s |", "|---|---|---|---|---|---|---|---|"]
    for names in SAMPLED_FILES.values():
        runs = [(name, _load(name, results)) for name in names]
        full = runs[0][1]
        for name, r in runs:
            if r is None:
                continue
            t, inc = r["config"]["trainer"], r["strategies"]["incremental"]
            loss = "full" if t["loss"] == "full" else f"sampled ({t['negatives']}, {t['negative_power']})"
            loss += " + in-batch" if t.get("in_batch_negatives") else ""
            ratio = f"{inc[nd] / full['strategies']['incremental'][nd]:.3f}" if full else "-"
            pop = (r["strategies"].get("popularity") or (full or {}).get("strategies", {}).get("popularity") or {}).get(nd)
            rows.append(f"| `{name}` | {r['stats']['items']:,} | {loss} | {_f(r['strategies']['static'][nd])} "
                        f"| {_f(inc[nd])} ({_f(inc[hr])}) | {ratio} | {_f(pop)} | {inc['update_seconds']} |")
    return "\n".join(rows)


def freshness_runs(results: str = RESULTS, name: str = "serve_load_10k_freshness_runs.json") -> str:
    """``serve_load_10k_freshness_runs.json``: model-freshness runs of ``bench/serve_load.py`` one
    after another on one machine (the code, the profile), with where the time went."""
    r = _load(name, results)
    rows = ["| run | code | profile | p50 / p99 s | cleaned / read / live / on every replica, p50 s | trainer: update / idle |",
            "|---|---|---|---|---|---|"]
    for i, run in enumerate((r or {}).get("runs", []), 1):
        st, loop = run["stages_p50_s"], run["trainer_loop_seconds"]
        total = sum(loop.values())
        rows.append(f"| {i} | {run['code']} | {run['profile']} | {run['p50_s']:.2f} / {run['p99_s']:.2f} "
                    f"| {' / '.join(f'{st[k]:.2f}' for k in ('cleaned', 'read', 'live', 'on_every_replica'))} "
                    f"| {loop.get('update', 0) / total:.0%} / {loop.get('idle', 0) / total:.0%} |")
    return "\n".join(rows)


def inline_clean_runs(results: str = RESULTS) -> str:
    """``serve_load_10k_inline_clean_runs.json``: freshness runs alternating small cleaning passes
    in-process (the default) and every pass a Ray Data job (``inline_clean_max_bytes: 0``)."""
    return freshness_runs(results, "serve_load_10k_inline_clean_runs.json")


def clean_pass(results: str = RESULTS) -> str:
    """``bench/clean_pass.py``: one cleaning pass by a Ray Data job against the same function
    in-process, by the size of the pass (same run)."""
    r = _load("clean_pass.json", results)
    rows = ["| events in the pass | file | Ray Data job: wall / machine CPU | in-process: wall / machine CPU "
            "| wall ratio | same rows |", "|---|---|---|---|---|---|"]
    for x in (r or {}).get("rows", []):
        rows.append(f"| {x['events']:,} | {x['file_kib']} KiB | {x['ray_data_wall_ms']} / {x['ray_data_cpu_ms']} ms "
                    f"| {x['local_wall_ms']} / {x['local_cpu_ms']} ms | {x['wall_ratio']}x | {x['same_rows']} |")
    return "\n".join(rows)


def request_path(results: str = RESULTS) -> str:
    """``bench/request_path.py``: a recommend answer's CPU in the replica class, Ray-free, by
    concurrency, against the do-nothing answer in the same run; and the encoder's arithmetic."""
    r = _load("request_path.json", results)
    if r is None:
        return ""
    rows = ["| clients | answers per forward pass | answers/s (one process) | CPU ms an answer | every call through "
            "FastAPI: CPU ms | do-nothing: CPU ms | recommend's extra CPU ms |", "|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        routed = x.get("recommend_fastapi_route")  # measured since plain calls skip FastAPI's routing
        routed_ms = f"{routed['cpu_ms_per_request']:.3f}" if routed else "-"
        rows.append(f"| {x['concurrency']} | {x['mean_batch']} | {x['recommend']['rps']:,.0f} "
                    f"| {x['recommend']['cpu_ms_per_request']:.3f} "
                    f"| {routed_ms} | {x['noop']['cpu_ms_per_request']:.3f} "
                    f"| {x['cpu_ms_over_noop']:.3f} |")
    e = r["encoder"]
    mm = (f", its matrix products {e['addmm_share']:.0%} of that time at {e['addmm_gmacs']} G/s (torch.profiler)"
          if e.get("addmm_share") is not None else "")
    rows.append(f"\nEncoder (width {e['d_model']}, {e['layers']} layers, {e['positions']} positions): "
                f"{e['macs_per_answer'] / 1e6:.2f} M multiply-adds an answer, {e['encoder_ms_per_answer']:.3f} ms an "
                f"answer at batch {e['batch']} ({e['encoder_gmacs']} G/s){mm}; this core's matrix product of the "
                f"MLP's shape: {e['matmul_gmacs']} G/s, so at best {e['floor_ms_per_answer']:.3f} ms an answer "
                f"({r['items']:,} items, profile {r['profile']}).")
    return "\n".join(rows)


def plain_path_runs(results: str = RESULTS) -> str:
    """``bench/serve_load.py --phases throughput``, runs alternated between two commits: the
    recommend answers at saturation, the do-nothing route's in the same run, and their ratio."""
    r = _load("serve_load_10k_plain_path_runs.json", results)
    rows = ["| run | code | plain calls skip FastAPI | /recommend at saturation | do-nothing | ratio "
            "| p99 at half saturation |", "|---|---|---|---|---|---|---|"]
    for x in (r or {}).get("runs", []):
        t = x["throughput"]
        half = t["half_saturation"]
        rows.append(f"| {x['run']} | {x['code']} | {'yes' if x['plain_path'] else 'no'} "
                    f"| {t['saturation_rps']['recommend']:.0f} req/s | {t['saturation_rps']['noop']:.0f} req/s "
                    f"| {t['ratio_at_saturation']:.2f} | {half['p99_ms']:.0f} ms ({half['connections']} connections) |")
    return "\n".join(rows)


def batch_wait_runs(results: str = RESULTS) -> str:
    """``bench/serve_load.py --phases throughput``, runs alternated between two
    ``serving.batch_wait_s``: low-load points, saturation and half of it."""
    r = _load("serve_load_10k_batchwait_runs.json", results)
    rows = ["| run | batch_wait_s | 1 connection: req/s, p50 / p99 ms | 4 connections: req/s, p50 / p99 ms "
            "| saturation (ratio) | p99 at half saturation |", "|---|---|---|---|---|---|"]
    for x in (r or {}).get("runs", []):
        t = x["throughput"]
        at = {w["connections"]: w["recommend"] for w in t["sweep"]}
        point = lambda c: f"{at[c]['rps']:.0f}, {at[c]['p50_ms']:.1f} / {at[c]['p99_ms']:.0f}"  # noqa: E731
        half = t["half_saturation"]
        rows.append(f"| {x['run']} | {x['batch_wait_s']:g} | {point(1)} | {point(4)} "
                    f"| {t['saturation_rps']['recommend']:.0f} req/s ({t['ratio_at_saturation']:.2f}) "
                    f"| {half['p99_ms']:.0f} ms ({half['connections']} connections) |")
    return "\n".join(rows)


def p99_runs(results: str = RESULTS) -> str:
    """``bench/serve_load.py --phases throughput`` runs one after another, each with the setting
    named: the p99 at and below half of saturation, and what might make it (the replicas' full
    collections during the /recommend sweep, ``replica.gc`` in ``/status``; the trainer's work)."""
    r = _load("serve_load_10k_p99_runs.json", results)
    rows = ["| run | setting | saturation (ratio) | p99 at half saturation | p99 at 2 / 4 / 8 connections "
            "| full collections in the sweep (ms) | events/s posted / learned |", "|---|---|---|---|---|---|---|"]
    for x in (r or {}).get("runs", []):
        t = x["throughput"]
        at = {w["connections"]: w["recommend"] for w in t["sweep"]}
        gcs = [w["gc"] for w in t["sweep"] if w.get("gc")]
        half, tr = t["half_saturation"], t["trainer"]
        low = " / ".join(f"{at[c]['p99_ms']:.0f}" for c in (2, 4, 8))
        rows.append(f"| {x['run']} | {x['setting']} "
                    f"| {t['saturation_rps']['recommend']:.0f} req/s ({t['ratio_at_saturation']:.2f}) "
                    f"| {half['p99_ms']:.0f} ms ({half['connections']} connections, {half['rps']:.0f} req/s) "
                    f"| {low} ms "
                    f"| {sum(g['full'] for g in gcs)} ({sum(g['full_ms'] for g in gcs):.0f}) "
                    f"| {tr['events_per_s_posted']:g} / {tr['events_learned_per_s']:g} |")
    return "\n".join(rows)


def version_cost(results: str = RESULTS) -> str:
    """``bench/version_cost.py``: a published version whole against an overlay (a base put once and
    the rows moved since), per version, same learner and moments."""
    r = _load("version_cost.json", results)
    rows = ["| items | rows moved since the base (mean) | bases in versions | trainer export: whole / overlay "
            "| put into the store | serialize and copy | replica adopts | exact top-10, batch 1 / per request at 16 "
            "| same top-10 |", "|---|---|---|---|---|---|---|---|---|"]
    for x in (r or {}).get("runs", []):
        w, o = x["mean_per_version"]["whole"], x["mean_per_version"]["overlay"]
        q = x["ratio_whole_over_overlay"]
        rows.append(f"| {x['items']:,} | {x['moved_rows_mean']:,} | {x['bases']} in {len(x['versions']['overlay'])} "
                    f"| {_ms(w['export_s'])} / {_ms(o['export_s'])} ({q['export_s']}x) "
                    f"| {w['put_mib']:.1f} / {o['put_mib']:.1f} MiB ({q['put_mib']}x) "
                    f"| {_ms(w['put_s'])} / {_ms(o['put_s'])} ({q['put_s']}x) "
                    f"| {_ms(w['adopt_s'])} / {_ms(o['adopt_s'])} ({q['adopt_s']}x) "
                    f"| {w['batch1_ms']} / {w['batch16_ms_per_request']} ms against {o['batch1_ms']} / "
                    f"{o['batch16_ms_per_request']} ms | {x['same_top10']} |")
    return "\n".join(rows)


def retention(results: str = RESULTS) -> str:
    """``bench/retention.py``: the ingest's disk and de-duplication keys over a long stream,
    without and with ``ingest.retention_s`` (same run), at each snapshot day."""
    r = _load("retention.json", results)
    rows = ["| day of stream | events posted | clean store | processed landing files | quarantine | ledger files "
            "| de-duplication keys | known users / items |", "|---|---|---|---|---|---|---|---|"]
    if r is None:
        return "\n".join(rows)
    keep = r["with"]["retention_days"]

    def cell(a: dict, b: dict, key: str) -> str:
        return f"{a[key]['mib']} -> {b[key]['mib']} MiB ({a[key]['files']:,} -> {b[key]['files']:,} files)"

    for a, b in zip(r["without"]["series"], r["with"]["series"]):
        rows.append(f"| {a['day']} | {a['posted']:,} | {cell(a, b, 'clean')} | {cell(a, b, 'landing')} "
                    f"| {cell(a, b, 'quarantine')} | {a['ledger']['files']} -> {b['ledger']['files']} "
                    f"| {a['seen_keys']:,} -> {b['seen_keys']:,} | {a['known_users']:,} / {a['known_items']:,} -> "
                    f"{b['known_users']:,} / {b['known_items']:,} |")
    w, wo = r["with"], r["without"]
    rows.append(f"| restart (rebuild from disk) | | {wo['restart_s']} s -> {w['restart_s']} s | | | | | |")
    rows.append(f"| ledger balanced, every event accounted for, same after a restart | | "
                f"{wo['ledger_accounts_for_every_event'] and wo['restart_ledger_matches']} -> "
                f"{w['ledger_accounts_for_every_event'] and w['restart_ledger_matches']} | | | | | |")
    rows.append(f"| a retry of day 0's first event | | {_retry(wo['retry_of_day_0'])} -> {_retry(w['retry_of_day_0'])} "
                f"(retention {keep:g} days) | | | | | |")
    return "\n".join(rows)


def retention_deployed(results: str = RESULTS) -> str:
    """``bench/retention_deployed.py``: the deployed app's retention, over HTTP."""
    r = _load("retention_deployed.json", results)
    rows = ["| events posted over HTTP (event time) | retention | clean parts written / pruned | landing files pruned "
            "| events pruned / keys left | left on disk: clean, landing, quarantine, ledger | ledger | a retry of the "
            "first event | /recommend after |", "|---|---|---|---|---|---|---|---|---|"]
    if r is None:
        return "\n".join(rows)
    p, d, led = r["pruned"], r["disk"], r["ledger_after_retry"]
    retry = r["retry_of_first_event"]
    retry = "quarantined: " + ", ".join(x.split(":")[0] for x in retry["rejected"]) if retry["rejected"] else _retry(retry)
    left = ", ".join(f"{d[k]['mib']} MiB" for k in ("clean", "landing", "quarantine", "ledger"))
    rows.append(f"| {r['events']:,} ({r['days']:g} days) | {r['bench_config']['ingest']['retention_s'] / 86400:g} days "
                f"| {r['clean_parts_written']} / {p['parts']} | {p['landing_files']} | {p['events']:,} / {r['seen_keys']:,} "
                f"| {left} "
                f"| received {led['received']:,} = applied {led['applied']:,} + quarantined {led['quarantined']} "
                f"+ duplicates {led['duplicates']} + pending {led['pending']} | {retry} "
                f"| {r['recommend_after']['source']}, version {r['recommend_after']['model_version']} |")
    return "\n".join(rows)


def _retry(x: dict) -> str:
    if x["accepted"]:
        return "applied again"
    return "duplicate" if x["duplicates"] else "quarantined: " + ", ".join(x["rejected"])


def clean_store_tail(results: str = RESULTS) -> str:
    """``bench/clean_store_tail.py``: a look for new clean parts against the folder listing it
    replaced, as the store grows (measured in the same run)."""
    r = _load("clean_store_tail.json", results)
    rows = ["| parts in the clean store | a look (stat the next names) | listing the folder (before) | ratio |",
            "|---|---|---|---|"]
    for x in (r or {}).get("rows", []):
        rows.append(f"| {x['parts']:,} | {x['look_ms']} ms | {x['listing_ms']} ms | {x['listing_over_look']:,.0f}x |")
    return "\n".join(rows)


ANN_FILES = ("ann_follow_ml-latest-small.json", "ann_follow_synthetic-100k.json",
             "ann_follow_synthetic-100k_rare-named.json", "ann_follow_synthetic-1m_rare-named.json")
RARE_ROWS_FILES = (("stream_ml-100k_loss-full.json", "full", "all"), ("stream_ml-100k_rare-named.json", "full", "named"),
                   ("stream_ml-100k_loss-sampled.json", "sampled (1024)", "all"),
                   ("stream_ml-100k_loss-sampled-rare-named.json", "sampled (1024)", "named"))


def ann_follow(results: str = RESULTS) -> str:
    """``bench/ann_follow.py``: the HNSW top-k following a learner's versions, against the exact
    scan of the same versions (same run)."""
    rows = ["| table | items | rare_item_rows | tolerance | recall@10 mean (min) | fresh rows, most | following a version | "
            "speed vs exact, batch 1 / 16 | first build | graphs made |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ANN_FILES:
        r = _load(name, results)
        for x in (r or {}).get("sizes", []):
            data = "trained, " + r["data"] if r["data"] != "synthetic" else "synthetic stream"
            rows.append(f"| {data} | {x['items']:,} | {r.get('rare_item_rows', 'all')} | {x['tolerance']} | {x['recall@10_mean']:.3f} ({x['recall@10_min']:.3f}) "
                        f"| {x['fresh_rows_max']:,} ({x['fresh_rows_max'] / x['items']:.0%}) | {x['follow_s_median']} s "
                        f"| {x['speedup_batch1']}x / {x['speedup_batch16']}x | {x['first_build_s']} s | {x['graph_builds']} |")
    return "\n".join(rows)


def rare_item_rows(results: str = RESULTS) -> str:
    """The prequential replay of ml-100k with the rare rows' stretch on every row a step moves
    (``trainer.rare_item_rows: all``) or on the rows its events name (``named``)."""
    segments = ("item warm-up 0", "item warm-up 1-10", "item warm-up 201+")
    rows = ["| file | loss | rare_item_rows | incremental NDCG@10 | " + " | ".join(f"{x} (NDCG@10)" for x in segments) + " |",
            "|---|---|---|---|" + "---|" * len(segments)]
    for name, loss, scope in RARE_ROWS_FILES:
        r = _load(name, results)
        if r is None:
            continue
        inc = r["strategies"]["incremental"]
        seg = inc["segments"]
        rows.append(f"| `{name}` | {loss} | {scope} | {_f(inc['ndcg@10'])} | "
                    + " | ".join(f"{_f(seg[x]['ndcg@10'])} ({seg[x]['n']:,})" for x in segments) + " |")
    return "\n".join(rows)


TABLES: dict[str, Callable[[str], str]] = {"harness-vs-live": harness_vs_live, "burst": burst_check,
                                           "consolidation": consolidation, "reliability": reliability,
                                           "serve-load": serve_load, "scoring-scale": scoring_scale,
                                           "serve-goals": serve_goals, "hot-path": hot_path,
                                           "state-size": state_size, "trainer-scale": trainer_scale, "trainer-loop": trainer_loop,
                                           "sampled-quality": sampled_quality, "freshness-runs": freshness_runs,
                                           "clean-store-tail": clean_store_tail, "ann-follow": ann_follow,
                                           "rare-item-rows": rare_item_rows, "checkpoint-scale": checkpoint_scale,
                                           "retention": retention, "retention-deployed": retention_deployed,
                                           "clean-pass": clean_pass, "inline-clean-runs": inline_clean_runs,
                                           "version-cost": version_cost, "request-path": request_path,
                                           "plain-path-runs": plain_path_runs, "batch-wait-runs": batch_wait_runs,
                                           "p99-runs": p99_runs, "freshness-rates": freshness_rates,
                                           "serve-goals-summary": serve_goals_summary}
_REGION = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)\n?(<!-- /table -->)", re.S)


def regions(text: str) -> dict[str, str]:
    """{table name: the README's text of it}."""
    return {m["name"]: m["body"] for m in _REGION.finditer(text)}


def render(text: str, results: str = RESULTS) -> str:
    """``text`` with every table region regenerated from ``results``."""
    return _REGION.sub(lambda m: m.group(1) + TABLES[m["name"]](results) + "\n" + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else "README.md"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    new = render(text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
    print(f"{path}: {len(regions(new))} tables regenerated from {os.path.normpath(RESULTS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
