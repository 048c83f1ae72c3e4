"""Synthetic detectors for the statistics tests: runs of two arms (an ablation's change and its baseline)
on a random test set, scored through the project's own VOC matching (ssd_core.evaluate.voc_matches), with
the two kinds of noise an ablation's delta carries:

* seed noise: each run's skill has a part shared by the two arms at the same seed (what pairing removes)
  and a part of its own, and each run makes its own per-object errors (`run`);
* test-image noise: images differ in difficulty, a share of them is of a type the arm is better at (the
  delta depends on how many a test set holds), and each arm makes its systematic per-object errors and
  false positives, the same for all of its seeds (`sys`): what averaging over seeds cannot remove.

A regime sets their sizes (REGIMES: "seed" where seed noise dominates, "image" where test-image noise
does). A test set holds `m` images of 1 + Poisson(1) objects in 3 classes.
"""
from __future__ import annotations

import math

import numpy as np

from ssd_core.evaluate import voc_matches, weighted_voc

NAMES = ["a", "b", "c"]
REGIMES = {
    "seed": dict(delta=0.15, shared=0.3, own=0.4, sys=0.0, run=1.0, bonus=0.0, p_type=0.3),
    "image": dict(delta=0.05, shared=0.05, own=0.01, sys=1.0, run=0.15, bonus=0.9, p_type=0.3),
}


def make_test_set(rng, m: int, r: dict) -> dict:
    counts = 1 + rng.poisson(1.0, m)
    gi = np.repeat(np.arange(m), counts)
    g = gi.size
    xy = rng.uniform(0, 200, (g, 2))
    arms = []
    for _ in range(2):  # per arm: systematic per-object errors and false positives, shared by its seeds
        nfp = rng.poisson(1.5, m)
        fi = np.repeat(np.arange(m), nfp)
        fxy = rng.uniform(0, 200, (fi.size, 2))
        arms.append(dict(eps=rng.normal(0, 1, g), fi=fi, fl=rng.integers(1, 4, fi.size), fs=rng.normal(0, 1, fi.size),
                         fb=np.concatenate([fxy, fxy + rng.uniform(20, 80, (fi.size, 2))], 1)))
    return dict(gi=gi, gl=rng.integers(1, 4, g), gb=np.concatenate([xy, xy + rng.uniform(20, 80, (g, 2))], 1),
                z=(rng.random(m) < r["p_type"]).astype(float), h=rng.normal(0, 0.5, m), m=m, arms=arms)


def run(rng, t: dict, arm: int, skill: float, r: dict):
    """One run of `arm` (0: the change, 1: the baseline) with `skill` on test set `t` -> VOCMatches."""
    a, gi = t["arms"][arm], t["gi"]
    g = gi.size
    bonus = r["bonus"] if arm == 0 else 0.0
    s = skill + t["h"][gi] + bonus * t["z"][gi] + r["sys"] * a["eps"] + r["run"] * rng.normal(0, 1, g)
    found = s + 1.0 > 0
    fs = (r["sys"] * a["fs"] + r["run"] * rng.normal(0, 1, a["fs"].size)) / math.hypot(r["sys"], r["run"]) - 0.5
    det_b = np.concatenate([t["gb"][found] + rng.normal(0, 2, (int(found.sum()), 4)), a["fb"]])
    det_b[:, 2:] = np.maximum(det_b[:, 2:], det_b[:, :2] + 1)
    return voc_matches(np.concatenate([gi[found], a["fi"]]), np.concatenate([t["gl"][found], a["fl"]]),
                       np.concatenate([s[found], fs]), det_b, gi, t["gl"], t["gb"], np.zeros(g, bool), NAMES)


def seed_skills(rng, r: dict) -> tuple[float, float]:
    shared = rng.normal(0, r["shared"])
    return shared + r["delta"] + rng.normal(0, r["own"]), shared + rng.normal(0, r["own"])


def sample(rng, r: dict, m: int, n: int):
    """One ablation: a test set of `m` images, `n` seeds of each arm -> ({seed: matches}, {seed: matches})."""
    t = make_test_set(rng, m, r)
    arm, base = {}, {}
    for s in range(n):
        ka, kb = seed_skills(rng, r)
        arm[s], base[s] = run(rng, t, 0, ka, r), run(rng, t, 1, kb, r)
    return arm, base


def true_delta(r: dict, m: int, draws: int, seed: int = 99) -> tuple[float, float]:
    """The population delta on test sets of `m` images (mean over `draws` independent seeds and test
    sets) and its Monte-Carlo standard error."""
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(draws):
        a, b = sample(rng, r, m, 1)
        d.append(weighted_voc(a[0])["mAP50"] - weighted_voc(b[0])["mAP50"])
    return float(np.mean(d)), float(np.std(d) / math.sqrt(draws))
