"""trainer.loss: sampled (increc_ray.learn.sampled): negatives are live items only, the loss is
the full softmax when they cover the catalogue and a close estimate of its gradient when they do
not, a learner with it learns, and its steps move only the item rows they touch."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from increc_ray.config import Config, ModelConfig, TrainerConfig, replace
from increc_ray.learn import learner as learner_module
from increc_ray.learn.learner import IncrementalLearner
from increc_ray.learn.sampled import Negatives, sampled_softmax
from increc_ray.serve.scorer import Scorer

from test_expiry import _day
from test_learner import N_ITEMS, SMALL, events, feed, planted_rows, successor_hit_rate

SAMPLED = TrainerConfig(loss="sampled", negatives=8)  # fewer than N_ITEMS: really sampled


def _record_draws(monkeypatch) -> list[torch.Tensor]:
    drawn = []
    draw = Negatives.draw
    monkeypatch.setattr(Negatives, "draw", lambda self: drawn.append(draw(self)) or drawn[-1])
    return drawn


def test_negatives_are_drawn_from_live_items_only_at_their_probabilities():
    counts = np.array([0, 5, 0, 100, 7, 1, 30])  # row 0 pad; row 2 a hole below
    neg = Negatives(counts, torch.tensor([2]), power=0.75, k=4)
    assert not neg.exact
    with torch.random.fork_rng():
        torch.manual_seed(0)
        rows = torch.cat([neg.draw() for _ in range(25_000)]).numpy()
        uniform = Negatives(counts, torch.tensor([2]), power=0.0, k=4)
        flat = torch.cat([uniform.draw() for _ in range(25_000)]).numpy()
    assert set(rows) == set(flat) == {1, 3, 4, 5, 6}, "pad, the hole or a row past the table was drawn"
    mass = (counts + 1.0) ** 0.75
    mass[[0, 2]] = 0
    assert np.allclose(np.bincount(rows, minlength=7) / len(rows), mass / mass.sum(), atol=0.005)
    assert np.allclose(neg.log_q.exp().numpy(), mass / mass.sum(), atol=1e-6)
    assert np.allclose(np.bincount(flat, minlength=7)[[1, 3, 4, 5, 6]] / len(flat), 0.2, atol=0.005)
    # no more live items than k: every live one, once, uncorrected (the exact softmax)
    every = Negatives(counts, torch.tensor([2]), power=0.75, k=5)
    assert every.exact and every.draw().tolist() == [1, 3, 4, 5, 6] and not every.log_q[[1, 3]].any()


def test_a_sampled_learner_draws_no_pad_hole_or_spare_row(monkeypatch):
    drawn = _record_draws(monkeypatch)
    L = IncrementalLearner(SMALL, replace(SAMPLED, negatives=4, user_ttl_s=10 * 86400.0, item_ttl_s=10 * 86400.0))
    _day(L, 0, ["a", "b"], [f"old{j}" for j in range(6)])
    for day in (4, 8, 11):  # day 11: the day-0-only items expire, their rows become holes
        _day(L, day, [f"u{day}_{j}" for j in range(3)], [f"d{day}_{j}" for j in range(6)])
    holes = set(L.vocab.holes().tolist())
    assert holes and L.model.capacity > L.n_items + 1  # there are holes and spare rows to avoid
    _day(L, 12, ["u4_0", "u8_1", "x"], [f"d8_{j}" for j in range(6)])
    after = drawn[-1]  # drawn after the holes appeared
    every = torch.cat(drawn)
    assert len(every) >= 4 * 4 and (every >= 1).all() and (every <= L.n_items).all()
    assert not holes & set(after.tolist())


@pytest.mark.parametrize("rare_rows", ["all", "named"])
def test_negatives_covering_the_catalogue_give_the_full_softmax_loss_and_step(rare_rows):
    """Same data, same init, SGD steps: the sampled path with every item a negative equals the
    full softmax, loss and every weight after the steps (gathering rows changes no arithmetic;
    the rare rows' stretch, taken from the stepped rows' counts, is the dense one, on every row
    or on the rows the events name alike)."""
    rows = planted_rows(n_users=20, length=10)
    out = []
    for cfg in (TrainerConfig(), replace(SAMPLED, negatives=N_ITEMS)):
        L = IncrementalLearner(SMALL, replace(cfg, optimizer="sgd", lr=0.5, weight_decay=0.0, lr_schedule="constant",
                                              rare_item_lr_mult=5.0, rare_item_count=20.0, rare_item_rows=rare_rows))
        L.observe(events(rows))
        init = L.model.item_emb.weight.detach().clone()
        out.append((L.update().loss, L.model.state_dict()))
    (loss_full, full), (loss_sampled, sampled) = out
    assert loss_sampled == pytest.approx(loss_full, rel=1e-5)
    for k in full:
        assert torch.allclose(full[k], sampled[k], atol=1e-6), f"{k} differs between the two losses"
    assert (full["item_emb.weight"] - init).abs().max() > 1e-3  # the steps did something to agree on


def test_the_sampled_gradient_points_where_the_full_one_does_thanks_to_the_log_q_correction():
    gen = torch.Generator().manual_seed(0)
    n, N = 200, 30
    counts = np.random.default_rng(0).zipf(1.5, n + 1).clip(max=1000)
    counts[0] = 0
    emb = (torch.randn(n + 1, 16, generator=gen) * 0.5).requires_grad_()
    hidden = torch.randn(N, 16, generator=gen)
    y = torch.as_tensor(np.random.default_rng(1).choice(np.arange(1, n + 1), N, p=counts[1:] / counts[1:].sum()))
    logits = hidden @ emb.T
    logits[:, 0] = float("-inf")
    full = torch.autograd.grad(F.cross_entropy(logits, y), emb)[0]
    neg = Negatives(counts, [], power=0.75, k=50)  # a quarter of the items, popular ones drawn more
    cos = {}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for corrected in (True, False):
            log_q = neg.log_q if corrected else torch.zeros_like(neg.log_q)
            mean = torch.zeros_like(emb)
            for _ in range(300):
                r = neg.draw()
                ce = sampled_softmax(hidden, emb[y], emb[r], log_q[y], log_q[r], r[None] == y[:, None]).mean()
                mean += torch.autograd.grad(ce, emb)[0]
            cos[corrected] = float(F.cosine_similarity(mean.flatten(), full.flatten(), 0))
    assert cos[True] > 0.95, f"sampled gradient too far from the full one: cosine {cos[True]:.3f}"
    assert cos[True] > cos[False] + 0.03, f"the logQ correction did not help: {cos}"


def test_a_sampled_learner_learns_planted_successors_from_the_stream():
    rows = planted_rows()
    L = IncrementalLearner(ModelConfig(), SAMPLED)
    stats = feed(L, rows, 10)
    hit, _ = successor_hit_rate(Scorer.from_weights(L.export_weights(1)))
    print(f"\nsampled ({SAMPLED.negatives} of {N_ITEMS} items): hit@10={hit:.2f} "
          f"loss {stats[0].loss:.2f}->{stats[-1].loss:.2f}")
    assert stats[-1].loss < stats[0].loss
    assert hit >= 0.7, f"planted successor in top-10 for only {hit:.0%} of histories (chance: 20%)"


def test_a_sampled_step_moves_only_the_rows_it_touched_weight_decay_and_moments_included(monkeypatch):
    stepped = []
    step_rows = learner_module.step_rows
    monkeypatch.setattr(learner_module, "step_rows",
                        lambda opt, table, rows, sub: stepped.append(rows.clone()) or step_rows(opt, table, rows, sub))
    L = IncrementalLearner(SMALL, replace(SAMPLED, weight_decay=0.1, replay_ratio=0.0, rare_item_lr_mult=5.0))
    rows = planted_rows(n_users=30, length=8)
    feed(L, rows[:150], 2)  # moments everywhere the early steps went
    table = L.model.item_emb.weight
    state = L.optimizer.state[table]
    before = table.detach().clone(), state["exp_avg"].clone(), state["exp_avg_sq"].clone()
    stepped.clear()
    L.observe(events([("solo", "i1", 10**7), ("solo", "i2", 10**7 + 1), ("solo", "i3", 10**7 + 2)]))
    L.update()
    touched = torch.zeros(len(table), dtype=torch.bool)
    touched[torch.cat(stepped)] = True
    assert len(stepped) == 1 and touched.sum() < L.n_items  # a few rows, not the table
    for name, old, new in zip(("weights", "exp_avg", "exp_avg_sq"), before,
                              (table.detach(), state["exp_avg"], state["exp_avg_sq"])):
        changed = (old != new).any(1)
        assert not (changed & ~touched).any(), f"{name} of untouched rows moved: {changed.nonzero().flatten()}"
        assert changed[touched][1:].all(), f"{name} of a touched row stood still"  # [0] is pad: no gradient...
    assert table.detach()[0].ne(before[0][0]).all()  # ...but weight decay: pad is stepped like any row


def test_a_sampled_learner_is_seeded_and_resumes_exactly_through_a_checkpoint():
    rows = planted_rows(n_users=40, length=10)
    chunks = np.array_split(np.arange(len(rows)), 6)
    cfg = replace(SAMPLED, replay_ratio=1.0, replay_users=16, rare_item_lr_mult=3.0)
    a = IncrementalLearner(SMALL, cfg)
    rng_before = torch.get_rng_state()
    for idx in chunks[:3]:
        a.observe(events([rows[i] for i in idx]))
        a.update()
    assert torch.equal(rng_before, torch.get_rng_state()), "the draws used the global torch RNG"
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = IncrementalLearner.from_state_dict(torch.load(buf))
    table = b.model.item_emb.weight
    assert b.optimizer.state[table]["exp_avg"].abs().sum() > 0  # the row-sparse steps' moments came back
    losses = {}
    for name, learner in (("a", a), ("b", b)):
        losses[name] = []
        for idx in chunks[3:]:
            learner.observe(events([rows[i] for i in idx] + [("new", "fresh", 10**7)]))
            losses[name].append(learner.update().loss)
    assert losses["a"] == losses["b"]
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), f"{k} diverged after resume"
    # the optimizer state has the dense layout: a checkpoint resumes under the full softmax too
    full = IncrementalLearner.from_state_dict(a.state_dict(), trainer_cfg=TrainerConfig())
    full.observe(events([("new", "i3", 10**7 + 5)]))
    assert np.isfinite(full.update().loss)


def test_from_scratch_training_runs_the_trainers_loss():
    cfg = Config.from_dict({"trainer": {"loss": "sampled", "negatives": 64, "negative_power": 0.0}})
    boot = cfg.bootstrap_trainer
    assert (boot.loss, boot.negatives, boot.negative_power) == ("sampled", 64, 0.0)
    assert Config.from_dict({}).bootstrap_trainer.loss == "full"


def test_in_batch_negatives_add_the_steps_own_targets_and_the_learner_still_learns(monkeypatch):
    """``trainer.in_batch_negatives``: each step scores its targets against the drawn negatives
    and the batch's own targets (each masked out for its own row), and still learns."""
    seen = []
    loss = learner_module.sampled_softmax
    monkeypatch.setattr(learner_module, "sampled_softmax",
                        lambda h, t, n, tq, nq, hits: seen.append((len(n), hits.sum(1).tolist())) or loss(h, t, n, tq, nq, hits))
    cfg = replace(SAMPLED, negatives=4, in_batch_negatives=True)
    L = IncrementalLearner(ModelConfig(), cfg)
    stats = feed(L, planted_rows(), 10)
    assert seen and all(k > 4 for k, _ in seen)  # more negatives than drawn: the targets joined them
    assert all(min(h) >= 1 for _, h in seen)  # every row's own target is among them, masked
    hit, _ = successor_hit_rate(Scorer.from_weights(L.export_weights(1)))
    assert stats[-1].loss < stats[0].loss and hit >= 0.7, hit
    seen.clear()
    L = IncrementalLearner(ModelConfig(), replace(cfg, in_batch_negatives=False))
    feed(L, planted_rows()[:200], 2)
    assert seen and all(k == 4 for k, _ in seen)  # off: the drawn ones only


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_rare_item_rows_named_leaves_a_row_that_is_only_a_negative_unstretched(loss):
    """With ``rare_item_rows: named`` an item no event of the step names (its one event is a
    user's first: no input, no target) moves by the plain step, 1/stretch of what ``all`` moves it
    (SGD), and an item the events name moves as under ``all``."""
    rows = planted_rows(n_users=20, length=10) + [("loner", "only-negative", 0)]
    moved = {}
    for rare_rows in ("all", "named"):
        base = TrainerConfig() if loss == "full" else replace(SAMPLED, negatives=N_ITEMS + 1)
        L = IncrementalLearner(SMALL, replace(base, optimizer="sgd", lr=0.5, weight_decay=0.0, lr_schedule="constant",
                                              rare_item_lr_mult=5.0, rare_item_count=20.0, rare_item_rows=rare_rows,
                                              replay_ratio=0.0, batch_size=512))  # one step: the runs differ only in it
        L.observe(events(rows))
        init = L.model.item_emb.weight.detach().clone()
        L.update()
        delta = (L.model.item_emb.weight.detach() - init).norm(dim=1)
        lone, named = (int(j) for j in L.vocab.lookup(["only-negative", rows[0][1]]))
        moved[rare_rows] = float(delta[lone]), float(delta[named])
    (neg_all, named_all), (neg_named, named_named) = moved["all"], moved["named"]
    stretch = 1 + 4.0 * 20 / (20 + 1)  # count 1: its one positive event
    assert neg_all > 0 and neg_named == pytest.approx(neg_all / stretch, rel=1e-3)
    assert named_all > 0 and named_named == pytest.approx(named_all, rel=1e-4)
