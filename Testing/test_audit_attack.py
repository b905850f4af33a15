"""The re-identification attack's scoring and training, on synthetic pictures (no rendering).

The two controls of the papers pin the scale: identical pictures must be identified every
time (ORIGINAL ≈ 100 %), identical options for everyone must score chance (BLACK ≈ 20 %).
A trained attacker must recognise *unseen* people from jittered pictures of them.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cpmae.audit import attack


def _unit_vectors(n, dim=16, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_identical_pictures_identified_every_time():
    e = _unit_vectors(20)
    res = attack.identification_rate(attack.distance_matrix(e, e), folds=300, seed=1)
    assert res.mean == pytest.approx(100.0)
    assert res.sd == pytest.approx(0.0)


def test_identical_options_score_chance_not_first_option():
    """BLACK: every option has the same embedding; ties must be broken at random."""
    q = _unit_vectors(20)
    black = np.tile(_unit_vectors(1, seed=5), (20, 1))
    res = attack.identification_rate(attack.distance_matrix(q, black), folds=2000, seed=2)
    assert abs(res.mean - 20.0) < 2.0, res
    assert res.sd > 3.0  # 20 trials per fold: a binomial spread, not a constant


def test_unrelated_embeddings_score_chance():
    q, o = _unit_vectors(30, seed=1), _unit_vectors(30, seed=2)
    res = attack.identification_rate(attack.distance_matrix(q, o), folds=2000, seed=3)
    assert 12.0 < res.mean < 28.0


def test_trial_options_are_distinct_other_subjects():
    rng = np.random.default_rng(0)
    n = 7
    d = rng.random((n, n))
    # a distance matrix where the query's own option is always farthest: never identified
    d[np.arange(n), np.arange(n)] = 10.0
    assert not attack.identification_trials(d, np.arange(n).repeat(50), rng).any()
    # and where it is always nearest: always identified
    d[np.arange(n), np.arange(n)] = -1.0
    assert attack.identification_trials(d, np.arange(n).repeat(50), rng).all()


def test_too_few_subjects_refused():
    with pytest.raises(ValueError):
        attack.identification_rate(np.zeros((4, 4)), folds=2)


def test_retrieval_curve_pessimal_and_optimal():
    e = _unit_vectors(25)
    orig = attack.retrieval_curve(attack.distance_matrix(e, e), folds=50)
    assert orig["mean"][0] == pytest.approx(1.0)  # correct option always ranked first
    black = attack.retrieval_curve(attack.distance_matrix(e, np.zeros_like(e)), folds=400, seed=1)
    a, m = np.array(black["alpha"]), np.array(black["mean"])
    assert np.abs(m - a).max() < 0.1  # uniform rank: the diagonal
    assert np.all(np.array(black["lo"]) <= m + 1e-12) and np.all(m <= np.array(black["hi"]) + 1e-12)


def _blob_people(n_people, n_pictures, size=32, seed=0):
    """Each 'person' a random smooth 2-view picture; later pictures shifted, re-exposed and noisy.

    Hard enough that raw pixel similarity (an untrained network) identifies poorly.
    """
    from scipy.ndimage import gaussian_filter, shift

    rng = np.random.default_rng(seed)
    people = []
    for _ in range(n_people):
        base = gaussian_filter(rng.random((2, size, size)), sigma=(0, 2.0, 2.0))
        base = (base - base.min()) / (np.ptp(base) + 1e-9)
        pics = [base]
        for _ in range(n_pictures - 1):
            p = shift(base, (0, *rng.uniform(-4, 4, 2)), order=1, mode="nearest")
            pics.append(p ** rng.uniform(0.6, 1.6) * rng.uniform(0.7, 1.2) + rng.normal(0, 0.1, p.shape))
        people.append(np.clip(np.stack(pics) * 255, 0, 255).astype(np.uint8))
    return people


def _held_out_rate(net, held_out):
    q = attack.embed(net, np.stack([p[0] for p in held_out]))
    o = attack.embed(net, np.stack([p[1] for p in held_out]))
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    return attack.identification_rate(attack.distance_matrix(q, o), folds=500).mean


def test_attacker_learns_to_recognise_unseen_people():
    torch.set_num_threads(2)
    held_out = _blob_people(12, 2, seed=99)  # other people: never seen in training
    torch.manual_seed(0)
    untrained = _held_out_rate(attack.EmbeddingNet(2).eval(), held_out)
    settings = attack.TrainSettings(steps=50, subjects_per_batch=6, samples_per_subject=3, lr=3e-3, seed=0)
    net, log = attack.train_attacker(_blob_people(12, 4, seed=0), settings)
    assert np.mean(log.losses[-10:]) < np.mean(log.losses[:10])
    trained = _held_out_rate(net, held_out)
    assert trained > 45.0 and trained > untrained + 15.0, (untrained, trained)  # chance is 20 %
