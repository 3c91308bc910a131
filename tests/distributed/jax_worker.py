"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4 (see
test_jax_sharding.py): JAX teaching on a 4-device mesh against one device. Prints one
JSON object of measured differences and caught errors."""

import json
import os
import sys
import tempfile

import jax
import numpy as np
from jax.sharding import Mesh

from numpyro_vmt import (VAE, ConditionalEnergyModel, ConditionalVAE, ConditionalVariationalMCMCTeaching,
                         EnergyModel, VariationalMCMCTeaching)
from numpyro_vmt.nets import conditional_networks
from numpyro_vmt.nets import default_networks

OPTIONS = dict(step_size=0.05, num_steps=4, energy_lr=1e-2, vae_lr=1e-2)
DATA = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)


def teacher(mesh, init="vae", **extra):
    e_net, enc, dec = default_networks((2,), latent_dim=2, hidden=(16,))
    vae = VAE(enc, dec, 2, (2,)) if init in ("vae", "generator") else None
    return VariationalMCMCTeaching(EnergyModel(e_net, (2,)), vae, rng=3, mesh=mesh, init=init,
                                   **dict(OPTIONS, **extra))


def params(t):
    return np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves((t.state.energy, t.state.vae,
                                                                                t.state.buffer))])


def diff(a, b):
    pa, pb = params(a), params(b)
    return float(np.max(np.abs(pa - pb)) / np.max(np.abs(pa)))


def chains_diff(a, b):
    """Largest difference of the persistent chains' positions, relative to their size."""
    ca, cb = np.asarray(a.state.chains.position), np.asarray(b.state.chains.position)
    return float(np.max(np.abs(ca - cb)) / np.max(np.abs(ca)))


def error(fn):
    try:
        fn()
    except (ValueError, TypeError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def main():
    out = {"devices": jax.device_count()}
    # fit: minibatches drawn inside the jitted iteration, chains from the VAE
    one, four = teacher(None), teacher(4)
    h1 = one.fit(DATA, num_iters=3, batch_size=16, progress=False)
    h4 = four.fit(DATA, num_iters=3, batch_size=16, progress=False)
    out["fit_vae"] = diff(one, four)
    out["fit_loss"] = float(np.max(np.abs(h1["loss"] - h4["loss"])))
    out["replicated"] = all(a.sharding.is_fully_replicated and len(a.sharding.device_set) == 4
                            for a in jax.tree.leaves(four.state))
    # step on a given global batch, more chains than data rows, replay buffer, a Mesh object
    a, b = (teacher(m, "persistent", num_samples=32) for m in (None, Mesh(np.array(jax.devices()), ("data",))))
    for i in range(3):
        a.step(DATA[16 * i:16 * (i + 1)])
        b.step(DATA[16 * i:16 * (i + 1)])
    out["step_persistent"] = diff(a, b)
    # conditional teacher: the context is sharded with its rows
    e_net, _, _ = conditional_networks((1,), (1,), latent_dim=1, hidden=(8,))
    cond = [ConditionalVariationalMCMCTeaching(ConditionalEnergyModel(e_net, (1,), (1,)),
                                               None, rng=1, mesh=m, init="noise", **OPTIONS)
            for m in (None, 4)]
    x = np.linspace(0, 1, 40, dtype=np.float32)[:, None]
    for c in cond:
        c.fit((x, 2 * x), num_iters=2, batch_size=8, progress=False)
    out["conditional"] = diff(*cond)
    # exact teaching: persistent MH chains, unconditional (split with the batch) and conditional
    # (one replicated chain per training row, each device moving its block of the minibatch's rows)
    mh = [teacher(m, num_samples=16, correction="mh", local_steps=2) for m in (None, 4)]
    for t in mh:
        t.fit(DATA, num_iters=3, batch_size=16, progress=False)
    out["mh"] = diff(*mh)
    out["mh_chains"] = chains_diff(*mh)
    e_net, enc, dec = conditional_networks((1,), (1,), latent_dim=1, hidden=(8,))
    cond_mh = [ConditionalVariationalMCMCTeaching(ConditionalEnergyModel(e_net, (1,), (1,)),
                                                  ConditionalVAE(enc, dec, 1, (1,), (1,)), rng=1, mesh=m,
                                                  correction="mh", local_steps=2, **OPTIONS) for m in (None, 4)]
    hist = [c.fit((x, 2 * x), num_iters=3, batch_size=8, progress=False) for c in cond_mh]
    out["conditional_mh"] = diff(*cond_mh)
    out["conditional_mh_chains"] = chains_diff(*cond_mh)
    out["conditional_mh_acceptance"] = [float(np.max(np.abs(hist[0]["path_acceptance"] - hist[1]["path_acceptance"]))),
                                        float(np.mean(hist[0]["path_acceptance"]))]
    # checkpoints: sharded -> single device -> sharded, against an uninterrupted run
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.ckpt")
        ref, a = teacher(4), teacher(4)
        ref.fit(DATA, num_iters=4, batch_size=16, progress=False)
        a.fit(DATA, num_iters=2, batch_size=16, progress=False)
        a.save(path)
        b = teacher(None)
        b.load(path)
        b.fit(DATA, num_iters=1, batch_size=16, progress=False)
        b.save(path)
        c = teacher(4)
        c.load(path)
        c.fit(DATA, num_iters=1, batch_size=16, progress=False)
        out["checkpoint"] = diff(ref, c)
        out["checkpoint_iteration"] = c.iteration
    # bad configurations
    out["err_batch"] = error(lambda: teacher(4).step(DATA[:6]))
    out["err_fit_batch"] = error(lambda: teacher(4).fit(DATA, num_iters=1, batch_size=10, progress=False))
    out["err_chains"] = error(lambda: teacher(4, num_samples=6).step(DATA[:8]))
    out["err_axis"] = error(lambda: teacher(Mesh(np.array(jax.devices()), ("batch",))))
    out["err_count"] = error(lambda: teacher(8))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
