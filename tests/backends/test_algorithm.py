r"""Tests that pin the algorithm: one iteration of variational MCMC teaching does what
the paper says (Xie, Zheng & Li, AAAI 2021), not merely something that moves the weights.

The case is built so that every quantity is known in closed form. The energy is linear,
:math:`E_w(x) = w^\top x + b`, so its gradient is :math:`w` everywhere; the decoder is a
constant :math:`c` (zero weights), so every chain starts at :math:`x^{(0)} = c`; the
revision is noise-free, so after :math:`K` steps
:math:`\tilde x = c - K h w` with :math:`h = \delta^2/2`. The maximum-likelihood gradient
of :math:`\bar E(\text{data}) - \bar E(\tilde x)` is then :math:`g = \bar x - \tilde x`
(with stopped gradients), and the faults give other vectors:

- wrong sign: :math:`-g`;
- wrong samples (:math:`x^{(0)}` for :math:`\tilde x`): :math:`\bar x - c`;
- a gradient through the chain: :math:`\bar x - c + 2 K h w` (from
  :math:`\partial_w\, w^\top(c - Khw)`).

The numbers are chosen so that each fault flips the sign of one component of the
gradient, and Adam's first step is :math:`-\mathrm{lr}\,g/(|g| + \epsilon)`: the new
weights show the sign of every component, the reported gradient norm its length.

The VAE is pinned by two properties: its update does not depend on the data batch
(real data never reach the VAE), and it does depend on :math:`\tilde x`.

``test_each_fault_is_caught`` runs a deliberately broken copy of each step (the
backend's ``energy_loss`` / ``vae_loss`` replaced in place) and checks that the
corresponding pin fails.
"""

import numpy as np
import pytest

DELTA, K, LR = 0.4, 5, 0.01
KH = K * DELTA ** 2 / 2                      # 0.4
C = np.array([0.5, 0.5])                     # the decoder's constant output: x⁽⁰⁾
W, B = np.array([-1.75, 3.75]), 0.3          # the linear energy
X_TILDE = C - KH * W                         # (1.2, -1.0)
DATA = np.array([1.5, -0.5]) + np.array([[0.3, 0.2], [-0.3, -0.2], [0.1, -0.4], [-0.1, 0.4]])
M = DATA.mean(0)                             # (1.5, -0.5)
GRAD = M - X_TILDE                           # (0.3, 0.5), the right gradient
FAULTS = {"sign": -GRAD, "x0": M - C, "through_chain": M - C + 2 * KH * W}
assert all((np.sign(g) != np.sign(GRAD)).any() for g in FAULTS.values())  # each flips a component


def teacher(B_, w=W, seed=0, data_batch=None):
    energy = B_.api.EnergyModel(B_.mlp(2, 1, weights=[(w[None, :], [B])]), (2,))
    encoder = B_.mlp(2, 4, (8,), seed=seed + 1)
    decoder = B_.mlp(2, 2, weights=[(np.zeros((2, 2)), C)])
    return B_.api.VariationalMCMCTeaching(energy, B_.vae(encoder, decoder, 2, (2,)), init="vae", rng=seed,
                                          step_size=DELTA, num_steps=K, noise_scale=0.0, energy_lr=LR, vae_lr=LR)


def check_energy_step(B_):
    """The energy's first step follows the maximum-likelihood gradient with x̃ = c − Khw."""
    t = teacher(B_)
    info = t.step(B_.array(DATA))
    w_new, b_new = B_.weights(t.energy.net)
    np.testing.assert_allclose(w_new[0], W - LR * np.sign(GRAD), rtol=0, atol=1e-6)
    np.testing.assert_allclose(b_new, [B], atol=1e-12)  # b cancels in E(data) − E(x̃)
    np.testing.assert_allclose(float(info.energy_grad_norm), np.linalg.norm(GRAD), rtol=1e-6)
    np.testing.assert_allclose(float(info.energy_samples), W @ X_TILDE + B, rtol=1e-6)
    np.testing.assert_allclose(float(info.energy_data), W @ M + B, rtol=1e-6)
    np.testing.assert_allclose(float(info.loss), W @ M - W @ X_TILDE, rtol=1e-6)


def check_vae_ignores_data(B_):
    """Real data never reach the VAE: two different batches, the same VAE update."""
    a, b = teacher(B_), teacher(B_)
    a.step(B_.array(DATA))
    b.step(B_.array(DATA[::-1] * 2.0 + 1.0))
    pa, pb = B_.params(a), B_.params(b)
    assert not np.array_equal(pa["energy.0"], pb["energy.0"])  # the data did reach the energy
    for k in pa:
        if not k.startswith("energy"):
            np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def check_vae_learns_revised_samples(B_):
    """The VAE is trained on x̃ = c − Khw: another energy, other x̃, another VAE update."""
    a, b = teacher(B_), teacher(B_, w=-W)
    a.step(B_.array(DATA))
    b.step(B_.array(DATA))
    pa, pb = B_.params(a), B_.params(b)
    assert not np.array_equal(pa["decoder.1"], pb["decoder.1"])  # the decoder's bias: its mean output


def test_energy_step_is_the_maximum_likelihood_gradient(backend):
    check_energy_step(backend)


def test_vae_never_sees_the_data(backend):
    check_vae_ignores_data(backend)


def test_vae_learns_the_revised_samples(backend):
    check_vae_learns_revised_samples(backend)


# ----------------------------------------------------------------- the faults
def _differentiable_revision(B_, energy, x):
    """K noise-free Langevin steps from x, keeping the graph (the fault: no stop-gradient)."""
    for _ in range(K):
        if B_.jax:
            grad = B_._jax.grad(lambda y: energy(y).sum())(x)
        else:
            x = x if x.requires_grad else x.clone().requires_grad_(True)
            grad, = B_._torch.autograd.grad(energy(x).sum(), x, create_graph=True)
        x = x - 0.5 * DELTA ** 2 * grad
    return x


def _broken(B_, fault):
    """``{name: replacement}`` of the backend's steps that make ``fault``."""
    from vmt.core.batch import context_and_data as split

    update = __import__(f"{B_.api.__name__}.update", fromlist=["x"])
    real, real_vae = update.energy_loss, update.vae_loss  # before they are replaced
    if fault == "vae_on_data":  # the iteration splits off the data batch first; the VAE then trains on it
        seen = {}

        def context_and_data(batch):
            seen["ctx"], seen["batch"] = split(batch)
            return seen["ctx"], seen["batch"]

        def vae_loss(config, vae, x_tilde, *args, **kwargs):
            return real_vae(config, vae, seen["batch"], *args, **kwargs)
        return {"context_and_data": context_and_data, "vae_loss": vae_loss}
    if fault == "sign":
        def broken(config, energy, batch, x_tilde):
            loss, *rest = real(config, energy, batch, x_tilde)
            return (-loss, *rest)
    elif fault == "x0":
        def broken(config, energy, batch, x_tilde):
            return real(config, energy, batch, B_.array(np.tile(C, (x_tilde.shape[0], 1))))
    else:
        def broken(config, energy, batch, x_tilde):
            x0 = B_.array(np.tile(C, (x_tilde.shape[0], 1)))
            return real(config, energy, batch, _differentiable_revision(B_, energy, x0))
    return {"energy_loss": broken}


@pytest.mark.parametrize("fault, check", [("sign", check_energy_step), ("x0", check_energy_step),
                                          ("through_chain", check_energy_step),
                                          ("vae_on_data", check_vae_ignores_data)])
def test_each_fault_is_caught(backend, fault, check, monkeypatch):
    # torch's teacher calls the steps it imported; JAX's update_core looks them up in its module
    where = __import__(f"{backend.api.__name__}.{'update' if backend.jax else 'teaching'}", fromlist=["x"])
    for name, broken in _broken(backend, fault).items():
        monkeypatch.setattr(where, name, broken)
    if backend.jax:  # a fresh trace of the iteration, which sees the broken step (and is cached nowhere else)
        import numpyro_vmt.teaching as teaching
        from numpyro_vmt.update import update_core

        monkeypatch.setattr(teaching, "update_core", backend._jax.jit(
            lambda spec, *args: update_core.__wrapped__(spec, *args), static_argnums=0))
    with pytest.raises(AssertionError):
        check(backend)
