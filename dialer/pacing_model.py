"""The predictive pacing math, vectorized over campaigns: estimators, conditional probabilities,
Poisson-binomial distributions and the choice of how many calls to place.

Everything here is pure NumPy on 2-D arrays whose first axis is the campaign (learned curves,
elapsed times) or campaign × horizon, campaign-major (probabilities, distributions); campaigns
with fewer calls or agents are padded with items that cannot change the result. The scalar,
per-campaign pure-Python twin of this math is `dialer.pacing_scalar`; the tests and the speed
bench (`bench/pacing_speed.py`) check that both give the same decisions.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Ring-time histogram: 1 s bins over [0, RING_MAX_S); a longer ring lands in the last bin.
RING_BIN_S = 1.0
RING_BINS = 120
RING_MAX_S = RING_BIN_S * RING_BINS
#: Handle-time histogram: 5 s bins over [0, HANDLE_MAX_S); longer handles form an exponential
#: tail whose mean excess is learned too (so a 40-minute call still gets a sane probability).
HANDLE_BIN_S = 5.0
HANDLE_BINS = 240
HANDLE_MAX_S = HANDLE_BIN_S * HANDLE_BINS

#: Probability-mass floor: a conditioning event rarer than this is treated as impossible.
_EPS = 1e-12


class Histogram:
    """Decayed counts on a uniform grid, seeded with a prior.

    `add(x)` first multiplies every count by `decay` (so an observation `k` steps old weighs
    `decay**k`: exponential forgetting measured in observations, not clock time, which keeps
    the object pure), then adds 1 to the bin of `x`. The prior is added once at construction
    and forgotten at the same rate as the data, so it only matters while data is scarce.
    """

    def __init__(self, bin_s: float, bins: int, prior: FloatArray, decay: float) -> None:
        if prior.shape != (bins,):
            raise ValueError(f"prior: needs shape ({bins},), got {prior.shape}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay: must be in (0, 1], got {decay}")
        self.bin_s = bin_s
        self.bins = bins
        self.decay = decay
        self.counts = prior.astype(np.float64).copy()

    def index(self, x: float) -> int:
        """The bin of `x`; negative values go to bin 0 and large ones to the last bin."""
        return min(self.bins - 1, max(0, int(x / self.bin_s)))

    def add(self, x: float, weight: float = 1.0) -> None:
        self.counts *= self.decay
        self.counts[self.index(x)] += weight

    def forget(self) -> None:
        """Age the counts by one observation without adding one (for a sibling histogram)."""
        self.counts *= self.decay

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def cdf_edges(self) -> FloatArray:
        """Cumulative counts at the bin edges 0, w, 2w, ..., bins*w (length bins+1)."""
        out = np.zeros(self.bins + 1, dtype=np.float64)
        np.cumsum(self.counts, out=out[1:])
        return out


def interp_edges(cdf: FloatArray, x: FloatArray, bin_s: float, share: int = 1) -> FloatArray:
    """Piecewise-linear interpolation of per-row edge values `cdf` (R, bins+1) at `x` (R, M).

    Within a bin the mass is taken as uniform. Beyond the last edge the last value holds. Rows
    of `x` use curve `row // share` (so several horizons of one campaign share its curve),
    and the lookup is a gather: no Python loop runs per row or per value.
    """
    edges = cdf.shape[1]
    rows = x.shape[0]
    bins = edges - 1
    pos = np.minimum(np.maximum(x * (1.0 / bin_s), 0.0), float(bins))
    idx = pos.astype(np.int64)
    np.minimum(idx, bins - 1, out=idx)
    frac = pos - idx
    # A flat gather (row offset + index) is cheaper than take_along_axis.
    idx += (np.arange(rows, dtype=np.int64) // share * edges)[:, None]
    flat = cdf.ravel()
    lo = flat[idx]
    hi = flat[idx + 1]
    out: FloatArray = lo + frac * (hi - lo)
    return out


@dataclass(frozen=True)
class ModelArrays:
    """One campaign's learned curves, normalized, ready to be stacked with other campaigns'.

    - `ring_human`: P(the call is a live answer placed-to-answer ≤ edge) at ring edges.
    - `ring_end`:   P(the call has ended — any outcome — by edge) at ring edges.
    - `handle`:     P(handle time ≤ edge) at handle edges; `1 - handle[-1]` is the tail mass.
    - `tail_mean`:  mean excess over HANDLE_MAX_S of the handles in the tail (seconds).
    """

    ring_human: FloatArray
    ring_end: FloatArray
    handle: FloatArray
    tail_mean: float


def _shifted(elapsed: FloatArray, horizons: FloatArray) -> FloatArray:
    """elapsed (C, M) + each horizon -> (C × H, M), campaign-major."""
    c, m = elapsed.shape
    out: FloatArray = (elapsed[:, None, :] + horizons[None, :, None]).reshape(c * len(horizons), m)
    return out


def ringing_answer_prob(
    ring_human: FloatArray, ring_end: FloatArray, elapsed: FloatArray, horizons: FloatArray
) -> FloatArray:
    """P(live answer in (e, e+h] | the call has not ended by e), per campaign × horizon, call.

    `ring_human`/`ring_end` are (C, RING_BINS+1), `elapsed` is (C, M), `horizons` is (H,);
    the result is (C × H, M), campaign-major. Calls that end without a live answer (busy,
    no-answer timeout, machine) are in `ring_end` but not in `ring_human`, which is exactly
    why conditioning divides by P(not ended by e) and not by P(not answered by e): a call
    still ringing at 24 s, with a 25 s timeout, is very unlikely to be a live answer.
    """
    c, m = elapsed.shape
    hk = len(horizons)
    h0 = interp_edges(ring_human, elapsed, RING_BIN_S)  # once per campaign, not per horizon
    alive = 1.0 - interp_edges(ring_end, elapsed, RING_BIN_S)
    h1 = interp_edges(ring_human, _shifted(elapsed, horizons), RING_BIN_S, hk).reshape(c, hk, m)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(
            (alive > _EPS)[:, None, :], (h1 - h0[:, None, :]) / alive[:, None, :], 0.0
        )
    out: FloatArray = np.minimum(np.maximum(p, 0.0), 1.0).reshape(c * hk, m)
    return out


def handle_cdf(
    handle: FloatArray, tail_mean: FloatArray, x: FloatArray, share: int = 1
) -> FloatArray:
    """P(handle ≤ x) per row: the histogram below HANDLE_MAX_S, an exponential tail above.

    Row r of `x` uses curve r // share of `handle` (C, HANDLE_BINS+1) and `tail_mean` (C, 1).
    """
    inside = interp_edges(handle, x, HANDLE_BIN_S, share)
    if not (x >= HANDLE_MAX_S).any():
        return inside
    tail_mass = np.repeat(1.0 - handle[:, -1:], share, axis=0)
    tail = np.repeat(tail_mean, share, axis=0)
    excess = np.maximum(x - HANDLE_MAX_S, 0.0)
    out: FloatArray = np.where(x < HANDLE_MAX_S, inside, 1.0 - tail_mass * np.exp(-excess / tail))
    return out


def busy_free_prob(
    handle: FloatArray, tail_mean: FloatArray, elapsed: FloatArray, horizons: FloatArray
) -> FloatArray:
    """P(handle ≤ e+h | handle > e): a busy agent `e` seconds into a call is free within `h`.

    `elapsed` is (C, M), `horizons` (H,); the result is (C × H, M), campaign-major. An agent
    whose elapsed time is beyond everything ever observed (survival ~ 0) is taken as about to
    be free (probability 1): the estimate has nothing better, and the feedback term corrects
    any systematic error.
    """
    c, m = elapsed.shape
    hk = len(horizons)
    c0 = handle_cdf(handle, tail_mean, elapsed)
    c1 = handle_cdf(handle, tail_mean, _shifted(elapsed, horizons), hk).reshape(c, hk, m)
    alive = (1.0 - c0)[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(alive > _EPS, (c1 - c0[:, None, :]) / alive, 1.0)
    out: FloatArray = np.minimum(np.maximum(p, 0.0), 1.0).reshape(c * hk, m)
    return out


#: Polynomials up to this length may be multiplied directly; longer ones go to the transform.
DIRECT_MAX = 16
#: ... but only while the spectrum product would hold more than this many values.
FFT_PRODUCT_MIN = 10000
#: `poisson_binomial` works through its rows in blocks of this many. A block's intermediates
#: (3.4 MB of spectra for 200 items, the rest far smaller) then stay in cache from one step
#: to the next, where one pass over 3,000 rows streams arrays of up to 80 MB through main
#: memory: in the speed bench, the same FFT arithmetic took 70 ms in one pass and 42 ms in
#: blocks of 128 rows (64 and 256 did about as well).
BLOCK_ROWS = 128
#: NumPy's BLAS (OpenBLAS) runs a matrix product of at most 2^18 multiply-adds (m·n·k) on
#: the calling thread and splits a larger one across cores. The DFT products are cut into
#: slices of at most that size: as fast on a quiet machine, and on a busy one the threaded
#: product spin-waited for a second core, doubling the CPU time and multiplying the tick's.
GEMM_SLICE_MNK = 1 << 18
#: ... and a transform whose DFT matrix is too large for slices of at least this many rows
#: goes to the FFT (long polynomials: there the O(n log n) transform wins anyway).
GEMM_SLICE_MIN_ROWS = 16


def _schoolbook_levels(rows: int, items: int, size: int) -> int:
    """How many pairwise schoolbook levels `poisson_binomial` runs before the transform.

    Levels continue while polynomials are short (length ≤ DIRECT_MAX) and the spectrum
    product would still be big; with few rows each step's fixed cost dominates, so the
    transform takes over sooner. Lengths go 2, 3, 5, 9, 17, ... and the count halves,
    rounded up (an odd count gets the polynomial 1 appended).
    """
    length, count, levels = 2, items, 0
    while (
        count > 1 and length <= DIRECT_MAX and rows * count * (size // 2 + 1) > FFT_PRODUCT_MIN
    ):
        length, count, levels = 2 * length - 1, (count + 1) // 2, levels + 1
    return levels


@functools.lru_cache(maxsize=32)
def _dft_matrix(length: int, size: int) -> FloatArray:
    """`np.fft.rfft(·, n=size)` of `length` coefficients as a (length, 2 (size//2 + 1)) real
    matrix: row j is the spectrum of z^j with real and imaginary parts interleaved, so
    `coeffs @ matrix` viewed as complex128 is the rfft of each row of `coeffs`.

    A short polynomial padded to `size` is mostly zeros, which an FFT transforms anyway;
    the matrix product touches only the `length` real coefficients and runs in BLAS.
    Read-only, because it is cached and shared.
    """
    spectra = np.fft.rfft(np.eye(length, dtype=np.float64), n=size, axis=1)
    out: FloatArray = np.ascontiguousarray(spectra).view(np.float64)
    out.flags.writeable = False
    return out


def poisson_binomial(p: FloatArray) -> FloatArray:
    """The pmf of the number of successes of independent Bernoulli(p[r, i]), per row r.

    Returns (R, I+1). Padding entries with p = 0 changes nothing, which is how campaigns with
    different numbers of calls share one array. The product of the I polynomials
    (1 - p + p z) is formed in vectorized steps over a block of `BLOCK_ROWS` rows at a time,
    never a Python loop per call: a few levels of a balanced tree of pairwise schoolbook
    products, then the spectra of the remaining polynomials, their product, and one inverse
    FFT. Rows are independent, and the schoolbook schedule is fixed once for all blocks: every
    row goes through the same steps whichever block it falls in.
    """
    rows, items = p.shape
    if items == 0:
        return np.ones((rows, 1), dtype=np.float64)
    size = 1 << items.bit_length()  # holds the whole product (degree `items`): no wrap-around
    levels = _schoolbook_levels(min(rows, BLOCK_ROWS), items, size)
    out = np.empty((rows, items + 1), dtype=np.float64)
    for start in range(0, rows, BLOCK_ROWS):
        stop = min(rows, start + BLOCK_ROWS)
        out[start:stop] = _poisson_binomial_block(p[start:stop], levels, size)
    return out


def _poisson_binomial_block(p: FloatArray, levels: int, size: int) -> FloatArray:
    """`poisson_binomial` of one block of rows: `levels` schoolbook levels, then spectra."""
    rows, items = p.shape
    # Layout (coefficient, row, polynomial): each vectorized step then works on large
    # contiguous blocks. Any pairing gives the same product, so the first half of the
    # polynomials is paired with the second half.
    polys = np.empty((2, rows, items), dtype=np.float64)
    polys[0] = 1.0 - p
    polys[1] = p
    for _ in range(levels):
        length, count = polys.shape[0], polys.shape[2]
        if count % 2:
            one = np.zeros((length, rows, 1), dtype=np.float64)
            one[0] = 1.0
            polys = np.concatenate([polys, one], axis=2)
            count += 1
        half = count // 2
        a, b = polys[:, :, :half], polys[:, :, half:]
        # Schoolbook: one vectorized step per coefficient of the left factor (at most
        # DIRECT_MAX steps, not one per call); many tiny FFTs would cost more.
        nxt = np.zeros((2 * length - 1, rows, half), dtype=np.float64)
        for i in range(length):
            nxt[i : i + length] += a[i] * b
        polys = nxt
    length, count = polys.shape[0], polys.shape[2]
    if count == 1:
        whole = polys[:, :, 0].T
    else:
        # The remaining polynomials, one per row of a contiguous (rows × count, length)
        # matrix: their spectra, the product of those, then one inverse FFT. The spectra are
        # a product with the DFT matrix, in slices that BLAS keeps on this thread, unless
        # the transform is so long that the slices would be tiny.
        coeffs = np.ascontiguousarray(polys.transpose(1, 2, 0)).reshape(rows * count, length)
        freqs = size // 2 + 1
        step = GEMM_SLICE_MNK // (length * 2 * freqs)
        if step >= GEMM_SLICE_MIN_ROWS:
            dft = _dft_matrix(length, size)
            flat = np.empty((rows * count, 2 * freqs), dtype=np.float64)
            for s in range(0, rows * count, step):
                np.matmul(coeffs[s : s + step], dft, out=flat[s : s + step])
            spectra = flat.view(np.complex128)
        else:
            spectra = np.fft.rfft(coeffs, n=size, axis=1)
        spec = spectra.reshape(rows, count, freqs).prod(axis=1)
        whole = np.fft.irfft(spec, n=size, axis=1)
    pmf = np.maximum(whole[:, : items + 1], 0.0)
    out: FloatArray = pmf / pmf.sum(axis=1, keepdims=True)
    return out


def compact_items(items_p: FloatArray, shift: IntArray) -> tuple[FloatArray, IntArray]:
    """Drop the certain items: p = 0 adds nothing, p = 1 adds exactly 1 (taken off `shift`).

    K - shift is unchanged, and the Poisson-binomial gets narrower: calls rung past the last
    possible answer and agents certainly still busy cost nothing. The remaining items are
    moved to the front of each row (a stable sort on "is certain"), and the array is cut to
    the widest row.
    """
    certain = (items_p <= 0.0) | (items_p >= 1.0)
    if not certain.any():
        return items_p, shift
    ones = (items_p >= 1.0).sum(axis=1)
    order = np.argsort(certain, axis=1, kind="stable")
    kept = np.take_along_axis(np.where(certain, 0.0, items_p), order, axis=1)
    width = int((~certain).sum(axis=1).max(initial=0))
    out: IntArray = (shift - ones).astype(np.int64)
    return kept[:, :width], out


_LOG_FACT = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, 4097, dtype=np.float64)))))


def binomial_pmf(n: IntArray, p: FloatArray, width: int) -> FloatArray:
    """pmf of Binomial(n[r, j], p[r]) at y = 0..width-1 -> (R, N, width); width ≤ 4097.

    Zero beyond n. When every row has the same n (the first scan of `choose_calls`), the
    log binomial coefficients are formed once for the shared grid rather than per row.
    """
    y = np.arange(width, dtype=np.int64)
    # log(0) would give 0 * -inf = nan at y = 0; a floor of 1e-300 gives exp(-690 y) = 0.
    logp = np.log(np.maximum(p, 1e-300))[:, None, None]
    logq = np.log(np.maximum(1.0 - p, 1e-300))[:, None, None]
    shared = bool((n == n[:1]).all())
    grid = n[:1] if shared else n
    nn = grid[:, :, None]
    yc = np.minimum(y, nn)
    logc = _LOG_FACT[nn] - _LOG_FACT[yc] - _LOG_FACT[nn - yc]
    logc = np.where(y <= nn, logc, -np.inf)  # exp(-inf) = 0 beyond n
    out: FloatArray = np.exp(logc + yc * logp + (nn - yc) * logq)
    return out


class ExcessTable:
    """G[r, y] = E[(K - shift[r] + y)+] for a row's count K (pmf `pmf[r]`), on demand.

    With tail sums S0(t) = P(K ≥ t) and S1(t) = E[K; K ≥ t], (K - s + y)+ is positive iff
    K ≥ s - y + 1 = t, so G = S1(t) - (s - y) S0(t): two cumulative sums once, then a gather
    for whichever y and rows are asked for.
    """

    def __init__(self, pmf: FloatArray, shift: IntArray) -> None:
        rows, width = pmf.shape
        ks = np.arange(width, dtype=np.float64)[None, :]
        self.width = width
        self.shift = shift
        self.s0 = np.zeros((rows, width + 1))
        self.s1 = np.zeros((rows, width + 1))
        self.s0[:, :width] = np.cumsum(pmf[:, ::-1], axis=1)[:, ::-1]
        self.s1[:, :width] = np.cumsum((pmf * ks)[:, ::-1], axis=1)[:, ::-1]

    def get(self, sel: IntArray, ys: int) -> FloatArray:
        """G[sel, 0..ys-1] as a (len(sel), ys) array."""
        y = np.arange(ys, dtype=np.int64)[None, :]
        base = self.shift[sel, None] - y
        t = np.minimum(np.maximum(base + 1, 0), self.width)
        flat = t + (sel * (self.width + 1))[:, None]  # flat gather: row offset + column
        g = self.s1.ravel()[flat] - base * self.s0.ravel()[flat]
        out: FloatArray = np.maximum(g, 0.0)
        return out


def expected_excess(pmf: FloatArray, shift: IntArray, ncap: int) -> FloatArray:
    """G[r, y] = E[(K - shift[r] + y)+] for y = 0..ncap (see `ExcessTable`)."""
    return ExcessTable(pmf, shift).get(np.arange(pmf.shape[0]), ncap + 1)


#: Pass 1 of `choose_calls` tries n = 0..SCAN-1 at once; only rows that accept them all are
#: bisected further (a steady campaign places a handful of calls per tick).
SCAN = 8


def choose_calls(
    items_p: FloatArray,
    shift: IntArray,
    new_p: FloatArray,
    tau: FloatArray,
    n_max: IntArray,
    horizons: int,
) -> IntArray:
    """The largest n ≤ n_max per campaign whose expected abandons stay within budget.

    Rows are campaign-major, `horizons` rows per campaign. Row r is one campaign at one
    horizon h. Its items are the ringing calls (success = live answer within h) followed by
    the busy agents (success = still busy at h + grace), so their Poisson-binomial count K
    equals A + (busy - F_busy), and X = A - F = K - shift with shift = busy + ready agents:
    live answers minus agents able to take them. n new calls add Y ~ Binomial(n, new_p).
    Expected abandons are E[(X + Y)+]; the new calls' share of them is
    E[(X + Y)+] - E[X+], and their expected live answers are n new_p. A row accepts n when
    that share is at most tau × n new_p (the new calls keep within the abandon budget); a
    campaign takes the largest n every one of its rows accepts. E[(X+Y)+] is convex in n, so
    the new calls' average abandon risk grows with n and a row's accepted set is {0..n_r},
    which makes scan-then-bisect exact.
    """
    rows = items_p.shape[0]
    items_p, shift = compact_items(items_p, shift)
    pmf = poisson_binomial(items_p)
    nmax_rows = np.repeat(n_max, horizons)
    ncap = int(nmax_rows.max(initial=0))
    table = ExcessTable(pmf, shift)
    tau_rows = np.repeat(tau, horizons)

    def accepts(n: IntArray, sel: IntArray) -> npt.NDArray[np.bool_]:
        width = int(n.max(initial=0)) + 1
        probs = binomial_pmf(n, new_p[sel], width)
        g = table.get(sel, width)
        abandons = np.einsum("rny,ry->rn", probs, g) - g[:, :1]
        budget = tau_rows[sel, None] * n * new_p[sel, None]
        ok: npt.NDArray[np.bool_] = (abandons <= budget + 1e-12) & (n <= nmax_rows[sel, None])
        return ok

    # Pass 1: n = 0..SCAN-1 for every row; accepted prefix length - 1 is the row's answer.
    all_rows = np.arange(rows)
    scan = np.arange(min(SCAN, ncap + 1), dtype=np.int64)
    ok = accepts(np.broadcast_to(scan, (rows, len(scan))), all_rows)
    best = np.cumprod(ok, axis=1).sum(axis=1) - 1
    # A row where a new call cannot answer within h accepts every n once it accepts 0.
    flat = (new_p <= 0.0) & (best >= 0)
    best[flat] = nmax_rows[flat]
    # Pass 2: rows that accepted the whole scan and may go higher: bisect (lo ok, hi not);
    # skipped when another horizon of the same campaign already stopped inside the scan.
    full = (best == len(scan) - 1) & (nmax_rows > best)
    stopped = np.where(full, np.iinfo(np.int64).max, best).reshape(-1, horizons).min(axis=1)
    more = np.flatnonzero(full & (np.repeat(stopped, horizons) >= len(scan) - 1))
    if more.size:
        lo = best[more].astype(np.int64)
        hi = nmax_rows[more] + 1
        for _ in range(max(1, math.ceil(math.log2(ncap + 2)))):
            active = hi - lo > 1
            if not active.any():
                break
            mid = np.where(active, (lo + hi) // 2, lo)
            ok_mid = accepts(mid[:, None], more)[:, 0]
            lo = np.where(active & ok_mid, mid, lo)
            hi = np.where(active & ~ok_mid, mid, hi)
        best[more] = lo
    per_campaign = best.reshape(-1, horizons).min(axis=1)
    out: IntArray = np.maximum(per_campaign, 0).astype(np.int64)
    return out
