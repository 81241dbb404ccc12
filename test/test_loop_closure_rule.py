"""The loop-closure rule (proposal, threshold, temporal consistency) on synthetic proposal streams,
and sequence scoring against a direct numpy computation on random similarity matrices."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from vlad_localization.images.frames import Pose
from vlad_localization.loop_closure import LoopClosureRule, select_loop_closure
from vlad_localization.sequence import QueryHistory, RunTimeline, sequence_scores

S = 10**9


@dataclass
class Cand:
    stamp_ns: int | None
    score: float = 0.9
    store: int = 1  # mapdb.Store.RUN
    frame_id: str = "camera0"
    pose: Pose | None = None
    map_id: int = 0


def stream(rule, matches, start_s=100, step_s=1.0, camera=0):
    """Feed one proposal per frame (``matches``: keyframe stamp in s, or None for a frame without a
    candidate); returns each frame's (status, consistent_frames)."""
    out = []
    for i, m in enumerate(matches):
        cands = [] if m is None else [Cand(round(m * S))]
        closure, decision = rule.decide(round((start_s + i * step_s) * S), cands, camera)
        assert (closure is not None) == (decision.status == "accepted")
        out.append((decision.status, decision.consistent_frames))
    return out


def test_consistency_one_accepts_each_confident_frame_on_its_own():
    rule = LoopClosureRule(0.5, 30.0, consistency=1)
    assert [s for s, _ in stream(rule, [10, 50, 3])] == ["accepted"] * 3


def test_a_steady_revisit_is_held_back_until_k_frames_agree():
    rule = LoopClosureRule(0.5, 30.0, consistency=3, consistency_window_s=5.0)
    assert stream(rule, [10, 11, 12, 13]) == [("inconsistent", 1), ("inconsistent", 2), ("accepted", 3),
                                              ("accepted", 4)]


def test_a_match_may_stay_on_one_keyframe_while_the_query_advances():
    rule = LoopClosureRule(0.5, 30.0, consistency=2, consistency_window_s=5.0)
    assert [s for s, _ in stream(rule, [10, 10, 10])] == ["inconsistent", "accepted", "accepted"]


def test_matches_may_jitter_back_within_the_window_while_the_chain_advances():
    rule = LoopClosureRule(0.5, 30.0, consistency=3, consistency_window_s=5.0)
    # 12 -> 11 steps back, but over the last three frames the match advances (10 -> 11, 12 -> 13);
    # 13 -> 10 is within the window, but 11 -> 10 over the last three goes back
    assert stream(rule, [10, 12, 11, 13, 10]) == [("inconsistent", 1), ("inconsistent", 2), ("accepted", 3),
                                                  ("accepted", 4), ("inconsistent", 5)]


def test_a_jump_restarts_the_chain():
    rule = LoopClosureRule(0.5, 30.0, consistency=2, consistency_window_s=5.0)
    # 10 -> 11 agree; 11 -> 40 is a jump (29 s > window); 40 -> 41 agree again
    assert stream(rule, [10, 11, 40, 41]) == [("inconsistent", 1), ("accepted", 2), ("inconsistent", 1),
                                              ("accepted", 2)]


def test_a_gap_without_a_proposal_restarts_the_chain():
    rule = LoopClosureRule(0.5, 30.0, consistency=2, consistency_window_s=5.0)
    assert stream(rule, [10, 11, None, 12, 13]) == [("inconsistent", 1), ("accepted", 2), ("no_candidate", 0),
                                                    ("inconsistent", 1), ("accepted", 2)]


def test_a_low_score_breaks_the_chain_like_a_gap():
    rule = LoopClosureRule(0.5, 30.0, consistency=2, consistency_window_s=5.0)
    statuses = []
    for i, (m, score) in enumerate([(10, 0.9), (11, 0.2), (12, 0.9), (13, 0.9)]):
        _, d = rule.decide((100 + i) * S, [Cand(m * S, score)], 0)
        statuses.append(d.status)
    assert statuses == ["inconsistent", "below_threshold", "inconsistent", "accepted"]


def test_a_revisit_walked_backwards_is_held_back():
    rule = LoopClosureRule(0.5, 30.0, consistency=2, consistency_window_s=5.0)
    assert [s for s, _ in stream(rule, [20, 19, 18, 17])] == ["inconsistent"] * 4
    assert [s for s, _ in stream(LoopClosureRule(0.5, 30.0), [20, 19, 18, 17])] == ["accepted"] * 4


def test_proposals_from_other_stores_or_cameras_do_not_agree():
    rule = LoopClosureRule(0.5, 30.0, consistency=2, consistency_window_s=5.0)
    t = [100 * S, 101 * S, 102 * S]
    assert rule.decide(t[0], [Cand(10 * S, store=1)], 0)[1].status == "inconsistent"
    assert rule.decide(t[1], [Cand(11 * S, store=0)], 0)[1].status == "inconsistent"  # the prebuilt map now
    assert rule.decide(t[2], [Cand(12 * S, store=0, frame_id="camera1")], 0)[1].status == "inconsistent"


def test_cameras_keep_their_own_chains():
    rule = LoopClosureRule(0.5, 30.0, consistency=2, consistency_window_s=5.0)
    assert rule.decide(100 * S, [Cand(10 * S)], camera=0)[1].status == "inconsistent"
    assert rule.decide(100 * S, [Cand(70 * S)], camera=1)[1].status == "inconsistent"
    assert rule.decide(101 * S, [Cand(11 * S)], camera=0)[1].status == "accepted"
    assert rule.decide(101 * S, [Cand(71 * S)], camera=1)[1].status == "accepted"


def test_the_metre_window_applies_when_both_keyframes_have_positions():
    rule = LoopClosureRule(0.5, 30.0, consistency=2, consistency_window_s=1000.0, consistency_window_m=3.0)
    near = [Cand(10 * S, pose=Pose((0.0, 0.0, 0.0))), Cand(12 * S, pose=Pose((2.0, 0.0, 0.0)))]
    far = [Cand(10 * S, pose=Pose((0.0, 0.0, 0.0))), Cand(12 * S, pose=Pose((5.0, 0.0, 0.0)))]
    for pair, second in ((near, "accepted"), (far, "inconsistent")):
        rule.reset()
        rule.decide(100 * S, [pair[0]], 0)
        assert rule.decide(101 * S, [pair[1]], 0)[1].status == second


def test_the_proposal_is_the_best_ranked_revisit_and_the_time_gap_holds():
    rule = LoopClosureRule(0.5, 30.0)
    recent, old_weak, old = Cand(90 * S, 0.99), Cand(10 * S, 0.1), Cand(20 * S, 0.99)
    closure, decision = rule.decide(100 * S, [recent, old_weak, old], 0)
    # the best-ranked revisit (rank 1) is the proposal; it is below the threshold: no closure
    assert closure is None and decision.status == "below_threshold" and decision.rank == 1
    closure, decision = rule.decide(100 * S, [recent, Cand(None, 0.99), old], 0)
    assert decision.rank == 2 and closure.match_stamp_ns == 20 * S and closure.query_stamp_ns == 100 * S
    assert rule.decide(100 * S, [recent], 0)[1].status == "no_candidate"
    assert select_loop_closure(100 * S, [Cand(10 * S, math.nan)], 0.0, 30.0) is None  # not re-ranked


# ------------------------------------------------------------------ sequence scoring
def direct_sequence_score(sim, cand, kf_stamps, ages, speeds, usable, missing_as_zero=False):
    """S(c) written out with loops: for each speed, the mean over query frames i of
    sim[i, nearest keyframe to t(c) - v * age_i] (dropping targets before the run and unusable ones,
    or counting them 0 with ``missing_as_zero``, as contrast-enhanced scores do)."""
    spacing = np.median(np.diff(kf_stamps))
    best = -np.inf
    for v in speeds:
        terms = []
        for i, age in enumerate(ages):
            target = kf_stamps[cand] - v * age
            if target < kf_stamps[0] - spacing:
                continue
            j = int(np.argmin(np.abs(kf_stamps - target)))  # ties: the earlier keyframe
            if not usable[j]:
                continue
            terms.append(sim[i, j])
        if terms:
            best = max(best, float(np.sum(terms) / (len(ages) if missing_as_zero else len(terms))))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_sequence_scores_equal_a_direct_computation(seed):
    rng = np.random.default_rng(seed)
    n, length = 60, int(rng.integers(2, 12))
    kf_stamps = np.cumsum(rng.integers(S // 2, 2 * S, n)).astype(np.int64)
    ages = np.concatenate([[0], np.cumsum(rng.integers(S // 4, S, length - 1))]).astype(np.int64)
    sim = rng.uniform(-1, 1, (length, n))
    usable = rng.random(n) > 0.1
    candidates = rng.choice(n, 15, replace=False)
    speeds = [0.5, 0.8, 1.0, 1.3, 2.0]
    got, _ = sequence_scores(lambda r, c: sim[r, c], candidates, kf_stamps, ages, speeds, usable)
    want = [direct_sequence_score(sim, c, kf_stamps, ages, speeds, usable) for c in candidates]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_a_single_frame_sequence_is_the_global_similarity():
    sim = np.array([[0.3, 0.7, 0.1]])
    got, _ = sequence_scores(lambda r, c: sim[r, c], np.array([0, 1, 2]), np.array([0, S, 2 * S]),
                             np.array([0]), [1.0])
    np.testing.assert_allclose(got, sim[0])


def test_the_matched_run_aligned_with_the_query_wins():
    """Query frames 0..9 revisit keyframes 20..29 (a keyframe a second, the query a frame a second):
    with noise that makes a look-alike keyframe 50 the single-frame best, the sequence picks 29."""
    rng = np.random.default_rng(1)
    n, length = 80, 10
    sim = rng.uniform(0.0, 0.3, (length, n))
    for i in range(length):
        sim[i, 29 - i] = 0.6  # frame i (i s old) shows keyframe 29 - i
    sim[0, 50] = 0.9  # the look-alike
    stamps = np.arange(n, dtype=np.int64) * S
    ages = np.arange(length, dtype=np.int64) * S
    scores, speed = sequence_scores(lambda r, c: sim[r, c], np.array([29, 50]), stamps, ages, [0.5, 1.0, 2.0])
    assert scores[0] > scores[1] and speed[0] == 1.0


def test_query_history_is_bounded_and_newest_first():
    h = QueryHistory(3)
    for t in range(5):
        h.push(0, t * S, np.full(4, t, np.float32))
    ages, descs = h.frames(0)
    assert list(ages) == [0, S, 2 * S] and list(descs[:, 0]) == [4, 3, 2]
    h.push(0, 0, np.zeros(4, np.float32))  # the clock went back (a bag looped): the history starts over
    assert len(h.frames(0)[0]) == 1 and len(h.frames(1)[0]) == 0


def test_run_timeline_groups_runs_and_forgets_evicted_keyframes():
    t = RunTimeline()
    for i in range(10):
        t.add(i, i * S, (0, "camera0" if i % 2 == 0 else "camera1"))
    stamps, ids = t.group((0, "camera0"))
    assert list(ids) == [0, 2, 4, 6, 8] and t.locate(4) == ((0, "camera0"), 2)
    t.forget_before(6)
    assert t.first_id == 6 and t.locate(8) is not None
    assert all(i >= 6 for g in ((0, "camera0"), (0, "camera1")) for i in t.group(g)[1])


# ------------------------------------------------------------------ the PR curve of the rule along a run
def synthetic_run():
    """Ten frames: a revisit of keyframes 10..15 (right, advancing) with a look-alike jump in the middle."""
    from vlad_localization.evaluation import FrameProposals

    matches = [(10, 0.6, True), (11, 0.7, True), (50, 0.95, False), (12, 0.8, True), (13, 0.9, True),
               (14, 0.5, True), (None, 0, False), (15, 0.4, True), (3, 0.85, False), (16, 0.3, True)]
    frames = []
    for i, (m, score, right) in enumerate(matches):
        cands = [] if m is None else [Cand(m * S, score, map_id=m)]
        positives = {(1, m)} if right else {(1, 10 + i)}
        frames.append(FrameProposals((100 + i) * S, 0, cands, positives))
    return frames


def test_closure_curve_with_consistency_one_is_the_single_frame_curve():
    from vlad_localization.evaluation import closure_curve, precision_recall

    frames = synthetic_run()
    proposals = [(f.candidates[0].score, (1, f.candidates[0].map_id) in f.positives) for f in frames if f.candidates]
    scores, correct = map(np.array, zip(*proposals))
    single = precision_recall(scores, correct, num_positive=10)
    curve = closure_curve(frames, {"min_time_gap_s": 30.0, "consistency": 1})
    assert curve["curve"] == single["curve"] and curve["auc"] == single["auc"]
    assert curve["recall_at_100_precision"] == 0.0  # the look-alike (0.95) outscores every right proposal


def test_closure_curve_with_consistency_counts_what_the_rule_accepts():
    from vlad_localization.evaluation import closure_curve

    curve = closure_curve(synthetic_run(), {"min_time_gap_s": 30.0, "consistency": 2, "consistency_window_s": 5.0})
    rows = {t: (p, r) for t, p, r in curve["curve"]}
    # threshold 0.3: chains 10-11 | 50 | 12-13-14 | gap | 15 | 3 | 16: accepted 11, 13, 14 (all right)
    assert rows[0.3] == (1.0, 0.3)
    # threshold 0.8: confident 50, 12(0.8), 13, 3: only 12 -> 13 agree
    assert rows[0.8] == (1.0, 0.1)
    assert curve["recall_at_100_precision"] == 0.3 and curve["accepted_right"] == 0.3


def direct_contrast(sim, i, j, usable, window):
    """(sim[i, j] - mean) / (std + eps) over the usable keyframes within ``window`` of j, by hand."""
    from vlad_localization.sequence import CONTRAST_EPS

    near = [k for k in range(j - window, j + window + 1) if 0 <= k < sim.shape[1] and usable[k]]
    values = np.array([sim[i, k] for k in near])
    return (sim[i, j] - values.mean()) / (values.std() + CONTRAST_EPS)


@pytest.mark.parametrize("seed", range(3))
def test_contrast_enhanced_sequence_scores_equal_a_direct_computation(seed):
    from vlad_localization.sequence import run_contrast

    rng = np.random.default_rng(10 + seed)
    n, length, window = 50, 6, 4
    kf_stamps = np.arange(n, dtype=np.int64) * S
    ages = np.arange(length, dtype=np.int64) * S
    sim = rng.uniform(-1, 1, (length, n))
    usable = rng.random(n) > 0.1
    usable[np.arange(0, n, 7)] = True
    z = np.array([[direct_contrast(sim, i, j, usable, window) for j in range(n)] for i in range(length)])
    candidates = np.flatnonzero(usable)[:12]
    got, _ = sequence_scores(lambda r, c: sim[r, c], candidates, kf_stamps, ages, [0.5, 1.0, 2.0], usable, window)
    want = [direct_sequence_score(z, c, kf_stamps, ages, [0.5, 1.0, 2.0], usable, True) for c in candidates]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(run_contrast(sim[0], usable, window)[usable], z[0][usable], rtol=0, atol=1e-9)


def test_contrast_lifts_the_place_that_stands_out_over_a_uniformly_similar_condition():
    """Keyframes 0..39 of another season all look alike to the query (0.8 +- noise) except the true
    place 20 (0.85); keyframes 40..79 of the query's season are unrelated but more similar (0.9): the
    raw similarity prefers the query's season, the contrast the true place."""
    from vlad_localization.sequence import run_contrast

    rng = np.random.default_rng(3)
    row = np.concatenate([0.8 + rng.normal(0, 0.005, 40), 0.9 + rng.normal(0, 0.02, 40)])
    row[20] = 0.85
    usable = np.ones(80, bool)
    assert np.argmax(row) >= 40 and np.argmax(run_contrast(row, usable, 5)) == 20


def test_fast_acceptance_metrics_equal_the_reported_curve():
    from vlad_localization.evaluation import precision_recall
    from vlad_localization.fusion_fit import acceptance_metrics

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        scores, correct = np.round(rng.random(n), 2), rng.random(n) > 0.5
        positives = int(correct.sum() + rng.integers(1, 3))
        curve = precision_recall(scores, correct, positives)
        assert acceptance_metrics(scores, correct, positives) == pytest.approx(
            (curve["recall_at_100_precision"], curve["auc"]), abs=1e-12)
