"""Replicates drawn in chunks and summarised by chunk-combined statistics.

Memory must not grow with the number R of replicates, so estimates g_1..g_R (d coordinates
each) are drawn ``chunk_size(d)`` at a time and folded into a :class:`ReplicateSummary`.
The chunk size is a constant of d alone (``CHUNK_ELEMENTS // d``, clamped to
[``MIN_CHUNK``, ``MAX_CHUNK``]), never of the machine, so the random stream and every number
are the same everywhere. Per chunk b of size n_b (mean m_b, M2_b = sum (g - m_b)^2):

* per coordinate: count, mean and M2 of y_r = g_r - g_1 (shifted by the first replicate, so
  a coordinate on which all replicates agree has M2 = 0 exactly), combined by Chan et al.'s rule,
  mean = m_a + (m_b - m_a) n_b / n,  M2 = M2_a + M2_b + (m_b - m_a)^2 n_a n_b / n,
  and the same for a per-replicate scalar (the cosine of g_r to a reference);
* optionally the moments of D_r = ||g_r - g_bar||^2 (its standard error, for ``check``):
  with y_r = g_r - c (c = g_1, so y is small), the sums of ||y||^2, ||y||^4,
  y, ||y||^2 y and y y^T, from which sum_r D_r and sum_r D_r^2 follow exactly for the final
  mean (O(d^2) memory);
* optionally a bootstrap over replicates, *stratified by chunk*: resample b draws n_b
  replicates with replacement from each chunk, so it holds R replicates, and only the sums
  of counts x y and counts x y^2 ([B, d] each) are kept. With one chunk (R <= chunk size) it
  is the plain percentile bootstrap with the same random draws (equal up to rounding); with
  J chunks the
  within-chunk resampling leaves out the spread between chunk means, which for iid
  replicates shrinks the bootstrap variance by the factor (1 - J / R) ~ 1 - 1 / chunk size
  (at most 1 / MIN_CHUNK = 0.4%).

Cost per chunk: O(n_b d) for the moments, O(n_b d^2) with the D moments, O(B n_b d) and
O(B n_b) memory for the bootstrap.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

#: replicates x coordinates held at once (the estimator's own workspace scales with it)
CHUNK_ELEMENTS = 2**16
MIN_CHUNK = 256
MAX_CHUNK = 8192


def chunk_size(coords: int) -> int:
    """Replicates per chunk for estimates of ``coords`` coordinates (machine-independent)."""
    return max(MIN_CHUNK, min(MAX_CHUNK, CHUNK_ELEMENTS // max(int(coords), 1)))


def chunk_sizes(replicates: int, coords: int) -> list[int]:
    """The sizes of the chunks ``replicates`` are drawn in: full chunks, then the rest."""
    size = chunk_size(coords)
    sizes = [size] * (replicates // size)
    return sizes + ([replicates % size] if replicates % size else [])


def draw_chunks(draw: Callable[[int], torch.Tensor], replicates: int, coords: int,
                between: Callable[[], None] | None = None) -> Iterator[torch.Tensor]:
    """``draw(n)`` for each chunk size n, in order; ``between()`` before each chunk (e.g.
    :func:`rgbench.bench.store.check_stop`, so a signal stops within a long cell)."""
    for size in chunk_sizes(replicates, coords):
        if between is not None:
            between()
        yield draw(size)


def _combine(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Chan et al.'s pairwise combination of (count, mean, M2)."""
    count = count_a + count_b
    step = mean_b - mean_a
    return count, mean_a + step * (count_b / count), m2_a + m2_b + step.square() * (count_a * count_b / count)


class ReplicateSummary:
    """Chunk-combined statistics of replicates [R, d] (module docstring).

    Args:
        reference: [d] or None; when given, the cosine of each replicate to it is summarised.
        resamples: B, bootstrap resamples (0: none).
        generator: the bootstrap's random stream.
        deviation_moments: keep what :meth:`deviation_sums` needs (O(d^2) memory).
    """

    def __init__(self, reference: torch.Tensor | None = None, *, resamples: int = 0,
                 generator: torch.Generator | None = None, deviation_moments: bool = False):
        self.reference = None if reference is None else reference.detach().reshape(-1).to("cpu", torch.float64)
        self.resamples = resamples
        self.generator = generator
        self.deviation_moments = deviation_moments
        self.count = 0
        self.shift = self.mean = self.m2 = None
        self.cos_mean = self.cos_m2 = torch.zeros((), dtype=torch.float64)
        self.boot_first = self.boot_second = None
        self.sums = None  # (sum ||y||^2, sum ||y||^4, sum y, sum ||y||^2 y, sum y y^T)

    def add(self, chunk: torch.Tensor) -> None:
        """Fold in the replicates ``chunk`` [n_b, ...] (flattened to [n_b, d], float64)."""
        g = chunk.detach().reshape(chunk.shape[0], -1).to("cpu", torch.float64)
        n_b = g.shape[0]
        if n_b == 0:
            return
        if self.shift is None:
            # Centring on the first replicate keeps sums of squares small (no cancellation) and
            # makes a coordinate on which every replicate agrees exactly 0: zero variance, exactly.
            self.shift = g[0].clone()
            d = g.shape[1]
            self.mean, self.m2 = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
            if self.resamples:
                self.boot_first = torch.zeros(self.resamples, d, dtype=torch.float64)
                self.boot_second = torch.zeros(self.resamples, d, dtype=torch.float64)
            if self.deviation_moments:
                zero = torch.zeros((), dtype=torch.float64)
                self.sums = [zero, zero, torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64),
                             torch.zeros(d, d, dtype=torch.float64)]
        y = g - self.shift
        mean_b = y.mean(0)
        m2_b = (y - mean_b).square().sum(0)
        count_a = self.count
        self.count, self.mean, self.m2 = _combine(count_a, self.mean, self.m2, n_b, mean_b, m2_b)
        if self.reference is not None:
            cos = torch.nn.functional.cosine_similarity(g, self.reference.expand_as(g), dim=-1)
            cos_mean_b = cos.mean()
            _, self.cos_mean, self.cos_m2 = _combine(count_a, self.cos_mean, self.cos_m2, n_b, cos_mean_b,
                                                     (cos - cos_mean_b).square().sum())
        if self.resamples:
            rows = torch.randint(n_b, (self.resamples, n_b), generator=self.generator)
            counts = torch.zeros(self.resamples, n_b, dtype=torch.float64)
            counts.scatter_add_(1, rows, torch.ones_like(counts))
            self.boot_first += counts @ y
            self.boot_second += counts @ y.square()
        if self.deviation_moments:
            a = y.square().sum(1)
            s = self.sums
            self.sums = [s[0] + a.sum(), s[1] + a.square().sum(), s[2] + y.sum(0), s[3] + a @ y, s[4] + y.T @ y]

    def _require(self, what: str) -> None:
        if self.count < 2:
            raise ValueError(f"ReplicateSummary: {what} needs at least 2 replicates, got {self.count}")

    @property
    def replicate_mean(self) -> torch.Tensor:
        """[d] the mean of the replicates."""
        return self.shift + self.mean

    @property
    def variance(self) -> torch.Tensor:
        """[d] the unbiased per-coordinate sample variance."""
        self._require("a variance")
        return self.m2 / (self.count - 1)

    @property
    def cosine_mean(self) -> float:
        return float(self.cos_mean)

    @property
    def cosine_sd(self) -> float:
        """The sample standard deviation of the replicates' cosines to the reference."""
        self._require("a standard deviation")
        return float((self.cos_m2 / (self.count - 1)).sqrt())

    def bootstrap(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(V_b, ||mean_b||) per resample: total variance and norm of the resampled mean."""
        self._require("a bootstrap")
        r = self.count
        first, second = self.boot_first / r, self.boot_second / r
        total = ((second - first.square()) * (r / (r - 1))).sum(-1).clamp(min=0.0)
        return total, (self.shift + first).norm(dim=-1)

    def deviation_sums(self) -> tuple[float, float]:
        """(sum_r D_r, sum_r D_r^2) for D_r = ||g_r - g_bar||^2, from the kept moments:
        with mu = g_bar - c, D_r = ||y_r||^2 - 2 y_r.mu + ||mu||^2 expanded in the sums."""
        self._require("the deviation sums")
        r = self.count
        s_a, s_aa, s_y, s_ay, s_yy = self.sums
        mu = self.mean
        c = mu.square().sum()
        s_b = s_y @ mu
        s_bb = mu @ s_yy @ mu
        s_ab = s_ay @ mu
        first = s_a - 2 * s_b + r * c
        second = s_aa + 4 * s_bb + r * c.square() - 4 * s_ab + 2 * c * s_a - 4 * c * s_b
        return float(first), float(second)
