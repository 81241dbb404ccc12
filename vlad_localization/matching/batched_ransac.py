"""Batched RANSAC homographies (Fischler & Bolles, 1981): every re-ranked candidate and patch size of a
frame, every hypothesis, in one vectorised torch computation on the descriptors' device.

It reproduces the semantics of OpenCV's ``findHomography(..., RANSAC)`` (the official re-ranking's fit,
:func:`.ransac.fit_homography`) rather than its random stream:

* hypotheses: minimal samples of 4 distinct correspondences; a sample with three collinear points
  (in either image) or whose four triangles change orientation between the images is degenerate
  and is drawn again (it costs no iteration, as in OpenCV); the homography of a sample is solved in
  closed form (projective basis, Hartley-normalised coordinates, float64);
* inliers: squared reprojection distance from H * candidate to the query point <= threshold ** 2;
* iterations: at most 2000, fewer as the best inlier ratio grows (confidence 0.995), updated after
  every hypothesis that beats the best strictly, exactly OpenCV's adaptive stopping rule;
* result (at least 4 inliers, else no fit): the best hypothesis's inliers, grown by a final refit
  (DLT on the inliers; its inlier set replaces them while it is larger, at most ``REFITS``
  times), and the DLT homography of those inliers. findHomography refits (DLT + Levenberg-
  Marquardt) too, and the masks of the OpenCV 5 build in use are the inlier sets of its refined H
  and barely vary between runs: without this refit the counts fall short of OpenCV's, with it they
  agree within OpenCV's own run-to-run spread (test_batched_ransac). The LM polish is not
  reproduced;
* exactly four matches: findHomography fits them without RANSAC and calls all four inliers (unless
  a point set has no spread along x or y); so does this.

Randomness is counter-based (a hash of seed, problem and draw), so the samples, and hence the
results, do not depend on the device, on how many hypotheses are evaluated at once, or on threads.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from vlad_localization.matching.ransac import MIN_MATCHES, HomographyFit, no_fit

MAX_ITERS = 2000  # OpenCV's findHomography defaults
CONFIDENCE = 0.995
MAX_ATTEMPTS = 10000  # degenerate draws in a row after which a problem stops (OpenCV's getSubset)
OVERSAMPLE = 4  # samples drawn per hypothesis scored in a round (most random samples are degenerate)
MIN_ROUND = 16
REFITS = 4  # final refit rounds (refit to the inliers, take the refit's inliers) until stable
# Upper bound on the (problems, hypotheses, matches) block scored at once
_MAX_BLOCK_BYTES = {"cpu": 32 * 1024 * 1024, "other": 512 * 1024 * 1024}
_MASK32 = 0xFFFFFFFF
_TRIANGLES = ((0, 1, 2), (1, 2, 3), (0, 2, 3), (0, 1, 3))  # every triple of a minimal sample


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """An integer hash of int64 values in [0, 2**32) (multipliers < 2**31, so no int64 overflow)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x68E31DA5) & _MASK32
    return x ^ (x >> 16)


def _sample_indices(streams: torch.Tensor, counts: torch.Tensor, first: torch.Tensor, draws: int) -> torch.Tensor:
    """(B, draws, 4) indices < counts[b], uniform and independent: problem b's draws ``first[b] ...``
    of its stream. A sample that repeats an index is degenerate (its points coincide) and is
    rejected like any other, which leaves uniform samples of 4 distinct matches (OpenCV redraws)."""
    device = streams.device
    draw = first.view(-1, 1) + torch.arange(draws, device=device, dtype=torch.int64).view(1, -1)
    keys = (streams.view(-1, 1, 1) + draw.unsqueeze(-1) * 4 + torch.arange(4, device=device).view(1, 1, 4)) & _MASK32
    return (_hash32(keys) * counts.view(-1, 1, 1)) >> 32  # uniform in [0, n)


def _normalisation(points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) Hartley similarity per problem: centroid to 0, mean distance sqrt(2) (float64)."""
    weight = valid.to(points.dtype).unsqueeze(-1)
    num = weight.sum(dim=1).clamp(min=1)
    centre = (points * weight).sum(dim=1) / num
    spread = ((points - centre.unsqueeze(1)).norm(dim=-1) * weight.squeeze(-1)).sum(dim=1) / num.squeeze(-1)
    scale = torch.where(spread > 0, math.sqrt(2.0) / spread.clamp(min=1e-300), torch.ones_like(spread))
    t = torch.zeros(points.shape[0], 3, 3, dtype=points.dtype, device=points.device)
    t[:, 0, 0] = t[:, 1, 1] = scale
    t[:, :2, 2] = -centre * scale.unsqueeze(-1)
    t[:, 2, 2] = 1.0
    return t


def _homogeneous(points: torch.Tensor) -> torch.Tensor:
    return torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)


def _adjugate(m: torch.Tensor) -> torch.Tensor:
    """Adjugate of (..., 3, 3) matrices (the inverse times the determinant, defined when singular)."""
    c = torch.linalg.cross  # rows of the adjugate's transpose are cross products of the columns
    cols = m.unbind(-1)
    return torch.stack([c(cols[1], cols[2]), c(cols[2], cols[0]), c(cols[0], cols[1])], dim=-2)


def _basis(quad: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) projective map taking e1, e2, e3, (1, 1, 1) to the four homogeneous points ``quad`` (..., 4, 3)."""
    m = quad[..., :3, :].transpose(-1, -2)  # columns p0, p1, p2
    weights = (_adjugate(m) @ quad[..., 3, :].unsqueeze(-1)).squeeze(-1)
    return m * weights.unsqueeze(-2)


_CORNERS = torch.tensor(_TRIANGLES)  # (4 triangles, 3 corners)


def _non_degenerate(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """(B, R) True where the samples ``src``/``dst`` (B, R, 4, 2) pass OpenCV's checks: no three
    points collinear (nor two equal) in either image, and all four triangles keep or all flip
    their orientation between the images. Collinear: a triangle's doubled area is <= 1e-6 times
    the product of its two sides' L1 lengths (float32; exact for integer pixel keypoints)."""
    corners = _CORNERS.to(src.device)
    pts = torch.stack([src, dst], dim=2)  # (B, R, 2 images, 4, 2)
    a, b, c = (pts[..., corners[:, i], :] for i in range(3))  # (B, R, 2, 4 triangles, 2)
    u, v = b - a, c - a
    area = u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]  # (B, R, 2, 4)
    sides = u.abs().sum(-1) * v.abs().sum(-1)
    collinear = (area.abs() <= 1e-6 * sides).flatten(2).any(dim=-1)
    flips = ((area[..., 0, :] * area[..., 1, :]) < 0).sum(dim=-1)
    return ~collinear & ((flips == 0) | (flips == 4))


def _hypotheses(src: torch.Tensor, dst: torch.Tensor):
    """Homographies (B, R, 3, 3) (unit Frobenius norm) of the minimal samples ``src``/``dst``
    (B, R, 4, 2) (normalised coordinates, float64) and (B, R) True where one is finite and non-zero."""
    h = _basis(_homogeneous(dst)) @ _adjugate(_basis(_homogeneous(src)))
    norm = torch.linalg.matrix_norm(h)
    valid = torch.isfinite(norm) & (norm > 0)
    return h / torch.where(valid, norm, torch.ones_like(norm))[..., None, None], valid


_UPPER = torch.triu_indices(9, 9)  # the 45 products h_j h_k (j <= k) of a homography's entries


def _inlier_forms(src: torch.Tensor, dst: torch.Tensor, valid: torch.Tensor, thr2: torch.Tensor) -> torch.Tensor:
    """(B, 45, M) float32 coefficients of one quadratic form per match, so that for a homography h
    (normalised coordinates) ``monomials(h) @ forms <= 0`` exactly when the match is an inlier:
    (u - x w)^2 + (v - y w)^2 <= t^2 w^2 with (u, v, w) = h (X, Y, 1), i.e. OpenCV's squared
    reprojection distance <= t^2 (w != 0). One product then scores every hypothesis on every
    match. Padded matches get ||h||^2 (= 1 > 0): never inliers."""
    big_x, big_y = src[..., 0], src[..., 1]
    x, y = dst[..., 0], dst[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    row_u = torch.stack([big_x, big_y, one, zero, zero, zero, -x * big_x, -x * big_y, -x], dim=-1)
    row_v = torch.stack([zero, zero, zero, big_x, big_y, one, -y * big_x, -y * big_y, -y], dim=-1)
    row_w = torch.stack([zero, zero, zero, zero, zero, zero, big_x, big_y, one], dim=-1)
    j, k = _UPPER.to(src.device)
    forms = (row_u[..., j] * row_u[..., k] + row_v[..., j] * row_v[..., k]
             - thr2.view(-1, 1, 1) * row_w[..., j] * row_w[..., k])
    forms = forms * torch.where(j == k, 1.0, 2.0).to(forms.dtype)  # off-diagonal terms appear twice
    padding = (j == k).to(forms.dtype).expand_as(forms)
    forms = torch.where(valid.unsqueeze(-1), forms, padding)
    return forms.transpose(1, 2).float().contiguous()


def _monomials(h: torch.Tensor) -> torch.Tensor:
    """(..., 45) products h_j h_k (j <= k) of (..., 3, 3) homographies."""
    flat = h.flatten(-2)
    j, k = _UPPER.to(h.device)
    return flat[..., j] * flat[..., k]


def _required_iterations(best: torch.Tensor, counts: torch.Tensor, max_iters: int, confidence: float) -> torch.Tensor:
    """OpenCV's RANSACUpdateNumIters for the best inlier count so far (max_iters before a model)."""
    ratio = best.double() / counts.double().clamp(min=1)
    denom = 1.0 - ratio.clamp(0.0, 1.0) ** MIN_MATCHES
    num = math.log(max(1.0 - confidence, 1e-300))
    log_denom = torch.log(denom.clamp(min=1e-300))
    iters = torch.where(
        (log_denom >= 0) | (-num >= max_iters * -log_denom), torch.full_like(ratio, max_iters), torch.round(num / log_denom)
    )
    iters = torch.where(denom < 2.2250738585072014e-308, torch.zeros_like(iters), iters)
    return torch.where(best >= MIN_MATCHES, iters, torch.full_like(iters, max_iters))


def _refit(src: torch.Tensor, dst: torch.Tensor, inliers: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) normalised DLT homographies of the inliers (float64), h33 = 1 where possible."""
    t_src, t_dst = _normalisation(src, inliers), _normalisation(dst, inliers)
    s = _homogeneous(src) @ t_src.transpose(-1, -2)
    d = _homogeneous(dst) @ t_dst.transpose(-1, -2)
    zero = torch.zeros_like(s)
    rows_u = torch.cat([s, zero, -d[..., :1] * s], dim=-1)  # (B, M, 9)
    rows_v = torch.cat([zero, s, -d[..., 1:2] * s], dim=-1)
    weight = inliers.to(s.dtype).unsqueeze(-1)
    normal = (rows_u * weight).transpose(1, 2) @ rows_u + (rows_v * weight).transpose(1, 2) @ rows_v
    _, vectors = torch.linalg.eigh(normal)
    h = torch.linalg.inv(t_dst) @ vectors[..., 0].reshape(-1, 3, 3) @ t_src
    scale = h[:, 2, 2]
    h = h / torch.where(scale.abs() > 1e-12, scale, h.flatten(1).norm(dim=1))[:, None, None]
    return h


def _inliers_of(h: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, valid: torch.Tensor, thr2: torch.Tensor):
    """(B, M) matches whose squared reprojection distance under ``h`` (B, 3, 3) is <= ``thr2``."""
    proj = _homogeneous(src) @ h.transpose(1, 2)
    err = (proj[..., :2] - dst * proj[..., 2:]).square().sum(-1)
    return (err <= thr2.view(-1, 1) * proj[..., 2].square()) & valid


def _polish(src, dst, valid, inliers, found, thr2):
    """The final refit (local optimisation): refit the homography to the inliers by DLT and take
    the refit's inlier set when it is larger, until it stops growing (at most ``REFITS`` times).
    Returns ((B, 3, 3) DLT homographies of the final inliers, (B, M) those inliers)."""
    mask = inliers & found.unsqueeze(1)
    for _ in range(REFITS):
        refreshed = _inliers_of(_refit(src, dst, mask), src, dst, valid, thr2)
        grows = found & (refreshed.sum(dim=1) > mask.sum(dim=1))
        if not bool(grows.any()):
            break
        mask = torch.where(grows.unsqueeze(1), refreshed, mask)
    return _refit(src, dst, mask), mask


def _exact_fits(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """(B,) True where a problem of exactly four matches has a homography: findHomography then
    takes the four as the model and all of them as inliers, unless a point set has no spread
    along x or y (its DLT normalisation fails); no RANSAC, no degeneracy checks."""
    spread = lambda p: (p - p.mean(dim=1, keepdim=True)).abs().sum(dim=1)  # noqa: E731  (B, 2)
    return (spread(src) > 0).all(dim=1) & (spread(dst) > 0).all(dim=1)


def batched_homographies(
    query_keypoints: list[np.ndarray],
    candidate_keypoints: list[np.ndarray],
    thresholds,
    seed: int | None = 0,
    device: torch.device | str = "cpu",
    max_iters: int = MAX_ITERS,
    confidence: float = CONFIDENCE,
) -> list[HomographyFit]:
    """RANSAC homographies (candidate -> query pixels) of B problems at once.

    ``query_keypoints[b]`` and ``candidate_keypoints[b]``: (M_b, 2) pixel arrays matched row by row;
    ``thresholds``: B reprojection thresholds in pixels (or one for all); ``seed``: the draws'
    seed (None: a fresh one). Returns one :class:`HomographyFit` per problem, as
    :func:`.ransac.fit_homography` does.
    """
    num = len(query_keypoints)
    if len(candidate_keypoints) != num:
        raise ValueError("query and candidate keypoints must list the same problems")
    sizes = []
    for q, c in zip(query_keypoints, candidate_keypoints):
        if len(q) != len(c):
            raise ValueError("query and candidate keypoints must be matched row by row")
        sizes.append(len(q))
    fits = [no_fit() for _ in range(num)]
    solvable = [b for b in range(num) if sizes[b] >= MIN_MATCHES]
    if not solvable:
        return fits
    device = torch.device(device)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (num,))[solvable]
    width = max(sizes[b] for b in solvable)
    src = np.zeros((len(solvable), width, 2))
    dst = np.zeros((len(solvable), width, 2))
    for i, b in enumerate(solvable):
        src[i, : sizes[b]] = candidate_keypoints[b]
        dst[i, : sizes[b]] = query_keypoints[b]
    counts_cpu = torch.tensor([sizes[b] for b in solvable], dtype=torch.int64)
    src_t = torch.from_numpy(src).to(device)
    dst_t = torch.from_numpy(dst).to(device)
    counts = counts_cpu.to(device)
    valid_pts = torch.arange(width, device=device).unsqueeze(0) < counts.unsqueeze(1)
    if seed is None:
        seed = int(torch.randint(0, 2**32, (1,)).item())
    base = _hash32(torch.tensor(int(seed) & _MASK32, dtype=torch.int64))
    streams = _hash32((base ^ _hash32(torch.tensor(solvable, dtype=torch.int64))) & _MASK32).to(device)
    inliers, found = _run(src_t, dst_t, valid_pts, counts, torch.from_numpy(thr ** 2).to(device), streams,
                          max_iters, confidence)
    exact = counts_cpu.to(device) == MIN_MATCHES
    exact_ok = exact & _exact_fits(src_t[:, :MIN_MATCHES], dst_t[:, :MIN_MATCHES])
    inliers = torch.where(exact.unsqueeze(1), exact_ok.unsqueeze(1) & valid_pts, inliers)
    found = torch.where(exact, exact_ok, found)
    homographies, inliers = _polish(src_t, dst_t, valid_pts, inliers, found, torch.from_numpy(thr ** 2).to(device))
    homographies = homographies.cpu().numpy()
    inliers, found = inliers.cpu().numpy(), found.cpu().numpy()
    for i, b in enumerate(solvable):
        if found[i]:
            keep = inliers[i, : sizes[b]]
            fits[b] = HomographyFit(
                np.asarray(query_keypoints[b], dtype=np.float64)[keep],
                np.asarray(candidate_keypoints[b], dtype=np.float64)[keep],
                homographies[i],
            )
    return fits


def _run(src, dst, valid_pts, counts, thr2, streams, max_iters: int, confidence: float):
    """The RANSAC loop over rounds: (B, M) inlier mask of each best model, (B,) whether one was found.

    Each round draws ``OVERSAMPLE`` times as many samples as it scores, per active problem from
    that problem's own draw counter; the first non-degenerate ones are scored (degenerate draws
    cost no iteration), so the sequence of hypotheses does not depend on the round size.
    """
    num, width = valid_pts.shape
    device = src.device
    t_src, t_dst = _normalisation(src, valid_pts), _normalisation(dst, valid_pts)
    n_src = (_homogeneous(src) @ t_src.transpose(1, 2))[..., :2]  # Hartley-normalised matches
    n_dst = (_homogeneous(dst) @ t_dst.transpose(1, 2))[..., :2]
    src32, dst32 = src.float(), dst.float()  # pixel matches for the degeneracy checks
    forms = _inlier_forms(n_src, n_dst, valid_pts, thr2 * t_dst[:, 0, 0].square())  # isotropic: t scales
    budget = _MAX_BLOCK_BYTES["cpu" if device.type == "cpu" else "other"]
    best = torch.full((num,), -1, dtype=torch.int64, device=device)
    best_mask = torch.zeros((num, width), dtype=torch.bool, device=device)
    iterations = torch.zeros(num, dtype=torch.int64, device=device)  # hypotheses evaluated
    drawn = torch.zeros(num, dtype=torch.int64, device=device)  # samples drawn
    idle = torch.zeros(num, dtype=torch.int64, device=device)  # draws since the last scored hypothesis
    active = torch.ones(num, dtype=torch.bool, device=device)
    while True:
        live = torch.nonzero(active).squeeze(1)
        if live.numel() == 0:
            break
        lives = live.numel()
        per_round = int(max(MIN_ROUND, min(max_iters, budget // max(1, lives * width * 6))))
        draws = per_round * OVERSAMPLE
        offsets = drawn[live]
        idx = _sample_indices(streams[live], counts[live], offsets, draws)  # (L, D, 4)
        flat = idx.reshape(lives, -1, 1)
        q_src = torch.gather(src32[live], 1, flat.expand(-1, -1, 2)).reshape(lives, draws, 4, 2)
        q_dst = torch.gather(dst32[live], 1, flat.expand(-1, -1, 2)).reshape(lives, draws, 4, 2)
        usable = _non_degenerate(q_src, q_dst)
        rank = torch.cumsum(usable, dim=1) - 1
        take = usable & (rank < per_round)
        rows_l, cols_d = torch.nonzero(take, as_tuple=True)
        slot = torch.full((lives, per_round), -1, dtype=torch.int64, device=device)
        slot[rows_l, rank[rows_l, cols_d]] = cols_d
        ok = slot >= 0
        chosen_idx = torch.gather(idx, 1, slot.clamp(min=0).unsqueeze(-1).expand(-1, -1, 4)).reshape(lives, -1, 1)
        s_src = torch.gather(n_src[live], 1, chosen_idx.expand(-1, -1, 2)).reshape(lives, per_round, 4, 2)
        s_dst = torch.gather(n_dst[live], 1, chosen_idx.expand(-1, -1, 2)).reshape(lives, per_round, 4, 2)
        h, finite = _hypotheses(s_src, s_dst)
        is_inlier = torch.bmm(_monomials(h).float(), forms[live]) <= 0  # (L, R, M)
        # a non-finite hypothesis is an iteration that scores nothing (OpenCV: runKernel fails)
        score = torch.where(ok & finite, is_inlier.sum(dim=-1), torch.full_like(slot, -1))
        # OpenCV's sequential loop: hypothesis v runs while v < niters(best before it)
        prior = best[live].unsqueeze(1)
        before = torch.cat([prior, torch.maximum(prior, torch.cummax(score, dim=1).values)[:, :-1]], dim=1)
        accepted = torch.where(before >= MIN_MATCHES, before, torch.zeros_like(before))
        needed = _required_iterations(accepted, counts[live].unsqueeze(1), max_iters, confidence)
        index = iterations[live].unsqueeze(1) + torch.arange(per_round, device=device).unsqueeze(0)
        over = ok & (index >= needed)
        ran = torch.cumprod((~over).to(torch.int64), dim=1).bool() & ok
        round_best, where = torch.where(ran, score, torch.full_like(score, -1)).max(dim=1)  # first maximum
        better = (round_best > best[live]) & (round_best >= MIN_MATCHES)
        chosen = is_inlier[torch.arange(lives, device=device), where]
        best_mask[live] = torch.where(better.unsqueeze(1), chosen, best_mask[live])
        best[live] = torch.where(better, round_best, best[live])
        iterations[live] += ran.sum(dim=1)
        # draws consumed: up to the last scored sample, or all of them when fewer were usable
        scored = ok.sum(dim=1)
        last = torch.where(scored > 0, slot.gather(1, (scored - 1).clamp(min=0).unsqueeze(1)).squeeze(1), -1)
        full = scored == per_round
        drawn[live] += torch.where(full, last + 1, torch.full_like(last, draws))
        idle[live] = torch.where(scored > 0, torch.where(full, torch.zeros_like(last), draws - 1 - last),
                                 idle[live] + draws)
        active[live] = ~over.any(dim=1) & (iterations[live] < max_iters) & (idle[live] < MAX_ATTEMPTS)
    return best_mask, best >= MIN_MATCHES
