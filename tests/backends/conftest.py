"""The ``backend`` fixture: one test body runs through both backends.

NumPyro parametrises its tests over kernel classes; we parametrise over our two
backends. :class:`Backend` is the small adapter a body needs besides the public names
(``B.api.Langevin``, ...): making arrays, reading them back, networks with given
weights, the teacher's parameters, and float64 (JAX: ``jax.enable_x64``; torch:
explicit dtypes). A backend whose framework is not installed is skipped.
"""

import contextlib
import importlib.util

import numpy as np
import pytest


class Backend:
    """What a test body needs of a backend besides its public names."""

    def __init__(self, name):
        self.name = name
        self.api = pytest.importorskip("pyro_vmt" if name == "pyro" else "numpyro_vmt")
        self.nets = self.api.nets
        self.jax = name == "numpyro"
        if self.jax:
            import jax
            import jax.numpy as jnp

            self.xp, self.f64, self.f32, self.int = jnp, jnp.float64, jnp.float32, jnp.int32
            self.checkpoint = "ck.npz"
            self._jax = jax
        else:
            import torch

            self.xp, self.f64, self.f32, self.int = torch, torch.float64, torch.float32, torch.long
            self.checkpoint = "ck.pt"
            self._torch = torch

    def __repr__(self):
        return self.name

    # ------------------------------------------------------------------ arrays
    def array(self, x, dtype=None):
        """A backend array of ``x`` (float64 by default for float input)."""
        x = np.asarray(x)
        if dtype is None and np.issubdtype(x.dtype, np.floating):
            dtype = self.f64
        if self.jax:
            return self.xp.asarray(x, dtype=dtype)
        return self._torch.as_tensor(x, dtype=dtype)

    def numpy(self, x):
        return self.api.to_numpy(x)

    def float64(self):
        """Context in which JAX computes in float64 (torch: dtypes are explicit)."""
        return self._jax.enable_x64(True) if self.jax else contextlib.nullcontext()

    def normal(self, seed, shape):
        """Standard normal draws from the backend's own RNG (float64)."""
        if self.jax:
            return self._jax.random.normal(self._jax.random.PRNGKey(seed), shape, dtype=self.f64)
        return self._torch.randn(shape, dtype=self.f64, generator=self._torch.Generator().manual_seed(seed))

    # ------------------------------------------------------------------ networks
    def mlp(self, in_features, out_features, hidden=(), seed=0, weights=None):
        """``nets.MLP`` in float64 with the same weights in both backends: drawn from
        ``numpy.random.default_rng(seed)`` (scaled by 1/√fan-in), or ``weights`` =
        ``[(W, b), ...]`` with ``W`` of shape ``(out, in)``."""
        net = self.nets.MLP(in_features, out_features, hidden) if not self.jax else \
            self.nets.MLP(in_features, out_features, hidden, rng=seed)
        if weights is None:
            g = np.random.default_rng(seed)
            weights = [(g.standard_normal(tuple(l.weight.shape)) / np.sqrt(l.weight.shape[1]),
                        0.1 * g.standard_normal(tuple(l.bias.shape))) for l in net.layers]
        return self.set_weights(net, weights)

    def set_weights(self, net, weights):
        if self.jax:
            import equinox as eqx

            ws = [self.array(w) for w, _ in weights]
            bs = [self.array(b).reshape(l.bias.shape) for (_, b), l in zip(weights, net.layers)]
            net = eqx.tree_at(lambda m: [l.weight for l in m.layers], net, ws)
            return eqx.tree_at(lambda m: [l.bias for l in m.layers], net, bs)
        net = net.double()
        with self._torch.no_grad():
            for layer, (w, b) in zip(net.layers, weights):
                layer.weight.copy_(self._torch.as_tensor(np.asarray(w)))
                layer.bias.copy_(self._torch.as_tensor(np.asarray(b)).reshape(layer.bias.shape))
        return net

    def weights(self, net):
        """``[W1, b1, ...]`` of an MLP as float64 numpy arrays."""
        return [np.array(self.numpy(a), dtype=np.float64) for l in net.layers for a in (l.weight, l.bias)]

    def vae(self, encoder, decoder, latent_dim, event_shape, **kwargs):
        vae = self.api.VAE(encoder, decoder, latent_dim, event_shape, **kwargs)
        return vae if self.jax else vae.double()

    def params(self, teacher):
        """Every trained array of a teacher (energy, encoder, decoder, observation scale) as numpy."""
        out = {f"energy.{i}": a for i, a in enumerate(self.weights(teacher.energy.net))}
        if teacher.vae is not None:
            for part in ("encoder", "decoder"):
                out |= {f"{part}.{i}": a for i, a in enumerate(self.weights(getattr(teacher.vae, part)))}
            out["log_obs_scale"] = np.array(self.numpy(teacher.vae.log_obs_scale))
        return out


BACKENDS = [name for name, module in (("pyro", "torch"), ("numpyro", "jax"))
            if importlib.util.find_spec(module) is not None]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each test body runs once per installed backend, JAX in float64 mode."""
    b = Backend(request.param)
    with b.float64():
        yield b
