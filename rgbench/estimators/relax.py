"""RELAX (Grathwohl et al. 2018) with the conditional noise E | T of docs/design.md §3.2.

For one sample, with E ~ p(E) reparameterised in the logits, T = T(E), X = X(T), and
Ẽ ~ p(E | T) reparameterised in the logits (``noise_given_trace``):

    g = (L(X) - c(Ẽ)) grad log P(T) + grad c(E) - grad c(Ẽ),

unbiased for any critic c because E_T[E_{Ẽ|T} c(Ẽ)] = E_E c(E): differentiating both sides
gives E[grad c(E)] = E[c(Ẽ) grad log P(T) + grad c(Ẽ)]. The coefficient's c(Ẽ) is treated
as a constant w.r.t. the logits (but not w.r.t. the critic). RELAX averages K such
estimates.

The critic c is an MLP with one hidden layer of ``hidden`` tanh units on the perturbed
logits z = -log E (= logits + Gumbel), flattened over the event, with the structure's
unusable positions (E = +inf) set to 0 so no inf/NaN enters the graph. Its weights belong to
the estimator instance: one critic per (event shape, dtype, device), created on first use
from ``critic_seed``. Training minimises the squared estimate, whose gradient w.r.t. the
critic's weights is an unbiased gradient of the variance (the mean does not depend on c):
:meth:`Relax.train_critic` runs Adam steps; :meth:`Relax.critic_loss` is the loss for a
training loop of one's own. :meth:`Relax.surrogate` does *not* train the critic (its
backward pass leaves unused gradients on the critic's weights; ``train_critic`` zeroes
them before each step).

Options: ``warmup_steps`` (default 200) critic steps that :meth:`Relax.warm_up` runs and
that the harness runs before measuring; ``hidden`` (32); ``lr`` (1e-2, Adam);
``critic_replicates`` (16 independent estimates per training step); ``critic_seed`` (0).

Cost per estimate: K samples, K conditional noise draws, 3K critic evaluations and K
objective evaluations; a critic step (``critic_loss``) adds a first-order and a double
backward pass through the distribution (see ``_squared_estimate`` for why it is arranged so).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rgbench.distributions.base import StructuredDistribution
from rgbench.estimators.base import Objective
from rgbench.estimators.catalog import register
from rgbench.estimators.common import (
    SurrogateEstimator,
    attach,
    check_int,
    check_positive_number,
    evaluate,
    gradient,
    leaf_copy,
    perturbed_logits,
    replicate,
)


def _new_critic(inputs: int, hidden: int, seed: int, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Linear-tanh-linear with PyTorch's default uniform(+-1/sqrt(fan_in)) initialisation,
    drawn from a private generator so that estimates do not depend on the global seed."""
    generator = torch.Generator().manual_seed(seed)
    critic = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    with torch.no_grad():
        for layer in (critic[0], critic[2]):
            bound = layer.in_features ** -0.5
            for param in (layer.weight, layer.bias):
                param.copy_(torch.rand(param.shape, generator=generator) * 2 * bound - bound)
    return critic.to(device=device, dtype=dtype)


@register("relax")
class Relax(SurrogateEstimator):
    """RELAX with a learned critic on the perturbed logits; unbiased for any critic."""

    has_critic = True

    def __init__(
        self,
        num_samples: int = 1,
        warmup_steps: int = 200,
        hidden: int = 32,
        lr: float = 1e-2,
        critic_replicates: int = 16,
        critic_seed: int = 0,
        **options: Any,
    ):
        super().__init__(num_samples, **options)
        self.warmup_steps = check_int(warmup_steps, "warmup_steps", self.label, minimum=0)
        self.hidden = check_int(hidden, "hidden", self.label)
        self.critic_replicates = check_int(critic_replicates, "critic_replicates", self.label)
        self.critic_seed = check_int(critic_seed, "critic_seed", self.label, minimum=0)
        self.lr = check_positive_number(lr, "lr", self.label)
        self._critics: dict[tuple, nn.Module] = {}

    # ------------------------------------------------------------------ critic
    def critic(self, dist: StructuredDistribution) -> nn.Module:
        """The critic for ``dist``'s event shape, dtype and device (created on first use)."""
        event = tuple(dist.logits.shape[-dist.logits_event_dim :])
        key = (event, dist.logits.dtype, dist.logits.device)
        if key not in self._critics:
            inputs = int(torch.Size(event).numel())
            self._critics[key] = _new_critic(inputs, self.hidden, self.critic_seed, dist.logits.dtype, dist.logits.device)
        return self._critics[key]

    @staticmethod
    def _critic_inputs(dist: StructuredDistribution, noise: torch.Tensor) -> torch.Tensor:
        """z = -log E, 0 at unusable positions, flattened over the event."""
        return perturbed_logits(dist, noise, fill=0.0).flatten(-dist.logits_event_dim)

    def _draw(self, dist: StructuredDistribution, objective: Objective, generator):
        """K samples: L(X), log P(T) and the critic inputs z(E), z(Ẽ), all reparameterised."""
        noise = dist.sample_noise((self.num_samples,), generator)  # reparameterised: depends on the logits
        with torch.no_grad():
            x, trace = dist.solve(noise.detach())
        values = evaluate(objective, dist.indicator(x), (self.num_samples, *dist.batch_shape), self.label)
        conditional = dist.noise_given_trace(trace, generator)
        log_p = dist.trace_log_prob(trace)
        return values, log_p, self._critic_inputs(dist, noise), self._critic_inputs(dist, conditional)

    # ------------------------------------------------------------------ estimate
    def _surrogate(self, dist: StructuredDistribution, objective: Objective, generator):
        values, log_p, z, z_conditional = self._draw(dist, objective, generator)
        critic = self.critic(dist)
        c_noise = critic(z).squeeze(-1)
        c_conditional = critic(z_conditional).squeeze(-1)
        # The coefficient's c(Ẽ) is constant w.r.t. the logits, not w.r.t. the critic.
        baseline = critic(z_conditional.detach()).squeeze(-1)
        per_sample = (values.detach() - baseline) * log_p + c_noise - c_conditional
        return values.mean(0).sum() + attach(per_sample.mean(0)).sum()

    # ------------------------------------------------------------------ training
    def _squared_estimate(self, dist: StructuredDistribution, objective: Objective, generator) -> torch.Tensor:
        """||g||^2 summed over the batch, for a leaf ``dist``: value exact, gradient w.r.t. the
        critic's weights exact, and no gradient to ``dist.logits``.

        The estimate is linear in its cotangents w = (a, v, ṽ) with a = L - c(Ẽ),
        v = dc/dz(E), ṽ = dc/dz(Ẽ):  g = A w,  A w = grad_logits[sum a log P + v.z(E) - ṽ.z(Ẽ)] / K.
        So d||g||^2/dphi = 2 (A^T g)·dw/dphi, where only w depends on the critic phi. A^T g is
        computed as d/du <A u, g> (exact at any u by linearity) at u = 1, *not* by
        differentiating A w through w: PyTorch's logcumsumexp backward (which the pool
        distributions' log-normalisers fall back to for rows spanning over 600 nats) takes
        log|cotangent|, so its double backward is NaN
        wherever a cotangent is exactly 0 -- which happens as soon as the tanh critic
        saturates (dc/dz = 0) or fits L exactly (a = 0). At u = 1 every cotangent that
        reaches the distribution's graph is a sum of same-signed nonzero terms.
        """
        values, log_p, z, z_conditional = self._draw(dist, objective, generator)
        critic = self.critic(dist)
        z_in = z.detach().requires_grad_()
        z_conditional_in = z_conditional.detach().requires_grad_()
        c_noise = critic(z_in).squeeze(-1)
        c_conditional = critic(z_conditional_in).squeeze(-1)
        # dc/dz as functions of the critic's weights (second derivatives of the MLP only).
        v, v_conditional = torch.autograd.grad(
            (c_noise.sum(), c_conditional.sum()), (z_in, z_conditional_in), create_graph=True
        )
        k = self.num_samples
        weights = ((values.detach() - c_conditional) / k, v / k, -v_conditional / k)
        terms = (log_p, z, z_conditional)

        def apply(cotangents, create_graph):  # A u
            total = sum((c * t).sum() for c, t in zip(cotangents, terms))
            return gradient(total, dist.logits, create_graph=create_graph, retain_graph=True)

        estimate = apply([w.detach() for w in weights], create_graph=False).detach()
        probes = [torch.ones_like(t).requires_grad_() for t in terms]
        projected = apply(probes, create_graph=True)
        if not projected.requires_grad:  # the estimate does not depend on the logits at all
            return estimate.pow(2).sum()
        adjoint = torch.autograd.grad((projected * estimate).sum(), probes, allow_unused=True)
        linear = sum((w * a.detach()).sum() for w, a in zip(weights, adjoint) if a is not None)
        return estimate.pow(2).sum() + 2 * attach(linear)

    def critic_loss(
        self, dist: StructuredDistribution, objective: Objective, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Squared norm of one fresh estimate (summed over the batch); its gradient w.r.t.
        the critic's weights is an unbiased gradient of the estimator's total variance.
        Draws its own K samples; no gradient reaches ``dist.logits``."""
        dist = self._prepare(dist, objective)
        with torch.enable_grad():
            return self._squared_estimate(leaf_copy(dist), objective, generator)

    def train_critic(
        self,
        dist: StructuredDistribution,
        objective: Objective,
        steps: int,
        lr: float | None = None,
        generator: torch.Generator | None = None,
    ) -> list[float]:
        """``steps`` Adam steps (learning rate ``lr``, default the ``lr`` option) on the mean
        squared estimate over ``critic_replicates`` replicates; returns the loss per step."""
        dist = self._prepare(dist, objective)
        steps = check_int(steps, "steps", self.label, minimum=0)
        critic = self.critic(dist)
        optimizer = torch.optim.Adam(critic.parameters(), lr=self.lr if lr is None else lr)
        params = list(critic.parameters())
        losses = []
        with torch.enable_grad():
            for _ in range(steps):
                replicated = replicate(dist, self.critic_replicates)
                loss = self._squared_estimate(replicated, objective, generator) / self.critic_replicates
                optimizer.zero_grad()
                loss.backward(inputs=params)
                # A NaN here would silently poison the critic (and every later estimate).
                if not bool(torch.stack([torch.isfinite(p.grad).all() for p in params]).all()):
                    raise FloatingPointError(
                        f"relax: the critic's gradient is not finite on {type(dist).__name__} (a NaN in the "
                        "derivatives of trace_log_prob or noise_given_trace); the critic was not updated"
                    )
                optimizer.step()
                losses.append(float(loss.detach()))
        return losses

    def warm_up(
        self, dist: StructuredDistribution, objective: Objective, generator: torch.Generator | None = None
    ) -> list[float]:
        """``train_critic`` for ``warmup_steps`` steps: what the harness runs before measuring."""
        return self.train_critic(dist, objective, self.warmup_steps, generator=generator)
