"""The core's batched L-BFGS: independent problems minimized together, each as if alone."""
import torch

from sciddiff.core.lbfgs import minimize_lbfgs_batched


def rosenbrock(a: torch.Tensor):
    """f_b(x) = sum_i (a_b - x_i)^2 + 100 (x_{i+1} - x_i^2)^2 per problem b (minimum x = a_b everywhere... for a_b = 1)
    and its gradient; x (B, n)."""
    def value_and_grad(x: torch.Tensor):
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            f = ((a[:, None] - x[:, :-1]) ** 2 + 100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2).sum(-1)
            return f.detach(), torch.autograd.grad(f.sum(), x)[0]
    return value_and_grad


def test_each_problem_reaches_its_own_minimum():
    a = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    x0 = torch.tensor([[-1.2, 1.0, -0.5, 0.3], [0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 1.5, 2.5]], dtype=torch.float64)
    x, f = minimize_lbfgs_batched(rosenbrock(a), x0, max_evals=2000)
    assert torch.allclose(x, torch.ones_like(x), atol=1e-4), x
    assert (f < 1e-8).all()


def test_batch_mates_do_not_change_a_problems_iterates():
    a = torch.tensor([1.0, 0.5], dtype=torch.float64)
    x0 = torch.tensor([[-1.2, 1.0, -0.5], [3.0, -2.0, 0.7]], dtype=torch.float64)
    together, _ = minimize_lbfgs_batched(rosenbrock(a), x0, max_evals=30)
    alone, _ = minimize_lbfgs_batched(rosenbrock(a[:1]), x0[:1], max_evals=30)
    assert torch.allclose(together[0], alone[0], atol=1e-12)
    assert not torch.allclose(together[0], together[1])


def test_a_converged_problem_stops_and_the_loop_ends():
    calls = []
    inner = rosenbrock(torch.ones(1, dtype=torch.float64))

    def counted(x):
        calls.append(1)
        return inner(x)

    x, f = minimize_lbfgs_batched(counted, torch.ones(1, 3, dtype=torch.float64), max_evals=100)
    assert len(calls) == 1 and torch.equal(x, torch.ones(1, 3, dtype=torch.float64))  # started at the minimum
