"""The training loop: the objective's own parameters are trained exactly once, K samples per
input with the batch divided by K, seeding, model selection, files and failure handling.

Problems here are tiny TopK instances; two estimators are written in this file (so the
trainer is tested independently of ``rgbench.estimators``), and the real ``t-loo`` and
``relax`` are used where they are registered.
"""

import json

import pandas as pd
import pytest
import torch

from rgbench import estimators
from rgbench.distributions import TopK
from rgbench.estimators.base import Estimator
from rgbench.experiments.trainer import TrainConfig, Trainer


class DetachingReinforce(Estimator):
    """T-REINFORCE whose surrogate drops L's graph: sum_b mean_k L.detach() log P(T)."""

    def estimate(self, dist, objective, num_replicates=1, generator=None):
        raise NotImplementedError("not needed here")

    def surrogate(self, dist, objective, generator=None):
        sample = dist.sample_with_trace((self.num_samples,), generator)
        values = objective(dist.indicator(sample.x))
        return (values.detach() * dist.trace_log_prob(sample.trace)).mean(0).sum()


class KeepingReinforce(DetachingReinforce):
    """The DiCE convention: value sum_b mean_k L (with its graph), gradient the estimate."""

    def surrogate(self, dist, objective, generator=None):
        sample = dist.sample_with_trace((self.num_samples,), generator)
        values = objective(dist.indicator(sample.x))
        weighted = values.detach() * dist.trace_log_prob(sample.trace)
        return values.mean(0).sum() + (weighted - weighted.detach()).mean(0).sum()


class Weighted:
    """L(x) = w * <c, x>: its own parameter w."""

    def __init__(self, w, c):
        self.w, self.c = w, c

    def __call__(self, ind):
        return self.w * (ind * self.c).sum(-1)


class TopKProblem:
    """Logits [batch, 5] for TopK(k=2); the objective has a parameter w. Evaluation is a
    scripted sequence of validation values when ``script`` is given."""

    selection_metric = "score"
    maximize = True

    def __init__(self, script=None, fail_at=None):
        torch.manual_seed(123)
        self.logits = torch.nn.Parameter(torch.randn(5))
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.c = torch.arange(5.0)
        self.script, self.fail_at = script, fail_at
        self.calls, self.inputs_seen, self.evaluations = 0, [], 0
        self.training = True

    def parameters(self):
        return [self.logits, self.w]

    def train_batch(self, num_inputs, generator):
        self.inputs_seen.append(num_inputs)
        logits = self.logits.expand(num_inputs, 5)
        return TopK(logits, k=2), Weighted(self.w, self.c)

    def evaluate(self, split):
        self.evaluations += 1
        if self.fail_at is not None and self.evaluations >= self.fail_at:
            raise RuntimeError("evaluation exploded")
        if split == "test":
            return {"score": float(self.logits.detach()[4]), "w": float(self.w.detach())}
        if self.script is not None:
            return {"score": self.script[self.evaluations - 1], "w": float(self.w.detach())}
        return {"score": float(self.logits.detach()[4]), "w": float(self.w.detach())}

    def train(self, mode=True):
        self.training = mode

    def state_dict(self):
        return {"logits": self.logits.detach().clone(), "w": self.w.detach().clone()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.logits.copy_(state["logits"])
            self.w.copy_(state["w"])


def config(**overrides):
    base = dict(steps=6, eval_every=2, lr=0.05, num_samples=2, batch_structures=6, seed=0)
    return TrainConfig(**{**base, **overrides})


@pytest.mark.parametrize("estimator_class, term", [(DetachingReinforce, "trainer"), (KeepingReinforce, "estimator")])
def test_objective_parameters_get_the_mean_gradient_exactly_once(estimator_class, term):
    """dL/dw = <c, x>, so the classifier-side gradient must be the mean of <c, x_k,b> over
    the K x B samples, whether the surrogate keeps L's graph or the trainer adds it."""
    problem = TopKProblem()
    trainer = Trainer(problem, estimator_class(num_samples=2), config(), progress=False)
    generator = torch.Generator().manual_seed(0)
    seen = []
    original = Weighted.__call__

    def spy(self, ind):
        seen.append((ind * self.c).sum(-1).detach())
        return original(self, ind)

    Weighted.__call__ = spy
    try:
        loss, _ = trainer._step_loss(generator)
    finally:
        Weighted.__call__ = original
    assert trainer.objective_term == term
    (grad_w,) = torch.autograd.grad(loss, problem.w)
    assert torch.allclose(grad_w, torch.cat([s.reshape(-1) for s in seen]).mean())


def test_batch_is_divided_by_the_number_of_samples():
    problem = TopKProblem()
    Trainer(problem, KeepingReinforce(num_samples=3), config(num_samples=3, batch_structures=7), progress=False).run()
    assert set(problem.inputs_seen) == {2}  # 7 // 3


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="steps must be a positive int"):
        config(steps=0)
    with pytest.raises(ValueError, match="optimizer must be"):
        config(optimizer="sgd")
    with pytest.raises(ValueError, match="fewer structures"):
        config(num_samples=4, batch_structures=3)


def test_run_writes_metrics_summary_and_status(tmp_path):
    problem = TopKProblem()
    trainer = Trainer(problem, KeepingReinforce(num_samples=2), config(), tmp_path, {"run": "demo", "seed": 0}, progress=False)
    summary = trainer.run()
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["step"].tolist() == [2, 4, 6]
    assert {"run", "seed", "elapsed_s", "train_objective", "valid_score", "valid_w"} <= set(metrics.columns)
    assert not (tmp_path / "metrics.csv.partial").exists()
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "complete"
    stored = json.loads((tmp_path / "summary.json").read_text())
    assert stored["test_score"] == summary["test_score"]
    assert stored["objective_term"] == "estimator" and stored["run"] == "demo"
    assert problem.training is False


def test_same_seed_gives_identical_metrics(tmp_path):
    frames = []
    for name in ("a", "b"):
        Trainer(TopKProblem(), KeepingReinforce(num_samples=2), config(), tmp_path / name, progress=False).run()
        frames.append(pd.read_csv(tmp_path / name / "metrics.csv").drop(columns="elapsed_s"))
    pd.testing.assert_frame_equal(*frames)
    Trainer(TopKProblem(), KeepingReinforce(num_samples=2), config(seed=1), tmp_path / "c", progress=False).run()
    other = pd.read_csv(tmp_path / "c" / "metrics.csv").drop(columns="elapsed_s")
    assert not other.equals(frames[0])


def test_model_selection_restores_the_best_validation_state():
    script = [0.1, 0.9, 0.5]
    problem = TopKProblem(script=script)
    states = []
    original = problem.evaluate

    def recording(split):
        if split == "valid":
            states.append(problem.state_dict())
        return original(split)

    problem.evaluate = recording
    summary = Trainer(problem, KeepingReinforce(num_samples=2), config(), progress=False).run()
    assert summary["best_step"] == 4 and summary["valid_score"] == 0.9
    assert torch.equal(problem.logits.detach(), states[1]["logits"])
    assert summary["test_score"] == float(states[1]["logits"][4])


def test_without_selection_the_final_state_is_tested():
    problem = TopKProblem(script=[0.9, 0.1, 0.5])
    summary = Trainer(problem, KeepingReinforce(num_samples=2), config(select_best=False), progress=False).run()
    assert summary["best_step"] == 6
    assert summary["test_score"] == float(problem.logits.detach()[4])


def test_failure_is_recorded_and_no_final_metrics_are_written(tmp_path):
    problem = TopKProblem(fail_at=2)
    trainer = Trainer(problem, KeepingReinforce(num_samples=2), config(), tmp_path, {"run": "bad"}, progress=False)
    with pytest.raises(RuntimeError, match="evaluation exploded"):
        trainer.run()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "evaluation exploded" in status["error"]
    assert status["evaluations_written"] == 1
    assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "summary.json").exists()
    assert (tmp_path / "metrics.csv.partial").exists()


def test_non_finite_loss_fails_loudly(tmp_path):
    problem = TopKProblem()
    with torch.no_grad():
        problem.w.fill_(float("nan"))
    trainer = Trainer(problem, KeepingReinforce(num_samples=2), config(eval_every=1), tmp_path, progress=False)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 1"):
        trainer.run()
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"


def test_non_finite_gradient_fails_before_the_parameters_are_poisoned(tmp_path):
    problem = TopKProblem()
    problem.w.register_hook(lambda grad: grad * float("nan"))  # finite loss, NaN gradient
    before = problem.w.detach().clone()
    trainer = Trainer(problem, KeepingReinforce(num_samples=2), config(eval_every=5), tmp_path, progress=False)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient \(1 parameter tensors\) at step 1"):
        trainer.run()
    assert torch.equal(problem.w.detach(), before)


def test_real_loo_estimator_keeps_the_objective_graph():
    if "t-loo" not in estimators.ESTIMATORS:
        pytest.skip("t-loo is not registered yet")
    trainer = Trainer(TopKProblem(), estimators.get("t-loo", num_samples=2), config(), progress=False)
    trainer.run()
    assert trainer.objective_term == "estimator"


def test_relax_critic_is_trained_alongside():
    if "relax" not in estimators.ESTIMATORS:
        pytest.skip("relax is not registered yet")
    problem = TopKProblem()
    estimator = estimators.get("relax", num_samples=2)
    trainer = Trainer(problem, estimator, config(), progress=False)
    trainer.run()
    critic = estimator.critic(problem.train_batch(2, torch.Generator())[0])
    fresh = type(estimator)(num_samples=2).critic(problem.train_batch(2, torch.Generator())[0])
    moved = [not torch.equal(a, b) for a, b in zip(critic.parameters(), fresh.parameters())]
    assert all(moved)
    assert "critic_loss" in trainer.rows[0] and trainer.rows[0]["critic_loss"] > 0


def test_evaluation_at_start_logs_step_zero():
    trainer = Trainer(TopKProblem(), KeepingReinforce(num_samples=2), config(eval_at_start=True), progress=False)
    summary = trainer.run()
    assert [row["step"] for row in trainer.rows] == [0, 2, 4, 6]
    assert summary["eval_s"] >= 0 and summary["steps_per_s"] > 0
