"""Twin networks for the cross-backend conformance tests: a torch network and an
equinox network with the same weights (torch initialises, JAX receives a copy), and
the weights of either side as numpy arrays in one layout (needs torch, JAX, equinox)."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import torch

from numpyro_vmt import nets as jnets
from pyro_vmt import nets as tnets


def copy_linears(eqx_module, torch_linears, get):
    """``eqx_module`` with the weights and biases of ``torch_linears`` at the layers ``get`` returns."""
    layers = get(eqx_module)
    weights = [jnp.asarray(t.weight.detach().numpy()) for t in torch_linears]
    biases = [jnp.asarray(t.bias.detach().numpy()).reshape(l.bias.shape) for t, l in zip(torch_linears, layers)]
    eqx_module = eqx.tree_at(lambda m: [l.weight for l in get(m)], eqx_module, weights)
    return eqx.tree_at(lambda m: [l.bias for l in get(m)], eqx_module, biases)


def twin_mlp(in_features, out_features, hidden, seed):
    """A float64 ``nets.MLP`` in torch and its copy in JAX."""
    torch.manual_seed(seed)
    t = tnets.MLP(in_features, out_features, hidden).double()
    j = jnets.MLP(in_features, out_features, hidden, rng=seed)
    return t, copy_linears(j, list(t.layers), lambda m: m.layers)


def mlp_weights(mlp):
    """``[W1, b1, W2, b2, ...]`` of a torch or equinox ``nets.MLP`` as float64 numpy arrays."""
    out = []
    for layer in mlp.layers:
        for a in (layer.weight, layer.bias):
            a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
            out.append(a.astype(np.float64).reshape(-1))
    return out
