"""Part 2 of the speed benchmark: our samplers against the peers, same energy, steps and chains.

- JAX: ``numpyro_vmt.Langevin(..., adjust=True).run`` (MALA) against BlackJAX's
  ``mala`` vmapped over the chains, both a jitted ``lax.scan`` of K steps with the
  per-step diagnostics kept. BlackJAX's ``step_size`` is ``ε = δ²/2``.
- torch: ``pyro_vmt.Langevin(...).run`` (unadjusted) against torchebm's
  ``LangevinDynamics``, whose update ``x − η∇U + noise_scale·√(2η)ξ`` is ours with
  ``η = δ²/2`` and ``noise_scale = 1``.
- Pyro: ``pyro_vmt.LangevinKernel(num_chains=C, adjust=True)`` driven by
  ``pyro_vmt.chains.run_chains`` and by ``pyro.infer.MCMC``, against ``pyro.infer.HMC(
  num_steps=1)`` (one leapfrog step plus Metropolis: MALA with ``ε = δ``) under
  ``pyro.infer.MCMC``. Pyro runs one chain per process, so HMC carries the C chains
  as one joint chain of ``C × d`` coordinates (one joint accept/reject); the
  gradient work per step is the same. No adaptation on either side.
- NumPyro: ``numpyro_vmt.LangevinKernel`` against ``numpyro.infer.BarkerMH``, the
  closest gradient-based MH kernel. ``BarkerMH.init`` refuses a batch of keys (it
  asserts ``chain_method`` is "parallel" or "sequential"), so both kernels are driven
  by the same jitted driver, what ``chain_method="vectorized"`` does: ``jax.vmap`` of
  ``kernel.sample`` over the chains inside a ``lax.scan``. (``numpyro.infer.MCMC``
  itself re-traces and re-compiles its loop at every ``run``, so timing through it
  would time the compiler.)
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, List

import common
from speed_floor import STEP

FULL_CASES = [("mlp2d", 64, 100), ("mlp2d", 1024, 100), ("conv8x8", 64, 20)]
QUICK_CASES = [("mlp2d", 64, 5)]


# ---------------------------------------------------------------------- JAX / BlackJAX
def _blackjax_run(leaves, key, x0, rebuild: Callable, num_steps: int):
    import blackjax
    import jax

    energy = rebuild(leaves)
    mala = blackjax.mala(lambda x: -energy(x[None])[0], 0.5 * STEP * STEP)
    state = jax.vmap(mala.init)(x0)

    def body(s, k):
        s, info = jax.vmap(mala.step)(jax.random.split(k, x0.shape[0]), s)
        return s, info

    return jax.lax.scan(body, state, jax.random.split(key, num_steps))


def blackjax_pair(kind: str, n: int, num_steps: int) -> Dict[str, Callable[[], Any]]:
    import jax

    from numpyro_vmt import Langevin

    energy, x0 = common.make_energy("jax", kind), common.make_points("jax", kind, n)
    leaves, rebuild = common.jax_split(energy)
    peer = jax.jit(partial(_blackjax_run, rebuild=rebuild, num_steps=num_steps))
    ours, key = Langevin(energy, STEP, num_steps, adjust=True), jax.random.PRNGKey(0)
    return {"ours": lambda: common.block(ours.run(key, x0)),
            "peer": lambda: common.block(peer(leaves, key, x0))}


# ---------------------------------------------------------------------- torch / torchebm
def torchebm_pair(kind: str, n: int, num_steps: int) -> Dict[str, Callable[[], Any]]:
    import torch
    from torchebm.core import BaseModel
    from torchebm.samplers import LangevinDynamics

    from pyro_vmt import Langevin

    class Wrapped(BaseModel):
        def __init__(self, energy):
            super().__init__()
            self.energy = energy

        def forward(self, x):
            return self.energy(x)

    energy, x0 = common.make_energy("torch", kind), common.make_points("torch", kind, n)
    peer = LangevinDynamics(Wrapped(energy), step_size=0.5 * STEP * STEP, noise_scale=1.0, device="cpu")
    ours = Langevin(energy, STEP, num_steps)
    return {"ours": lambda: ours.run(0, x0),
            "peer": lambda: peer.sample(x=x0, n_steps=num_steps, generator=torch.Generator().manual_seed(0))}


# ---------------------------------------------------------------------- Pyro
def pyro_fns(kind: str, n: int, num_steps: int) -> Dict[str, Callable[[], Any]]:
    from pyro.infer import HMC, MCMC

    from pyro_vmt import LangevinKernel
    from pyro_vmt.chains import run_chains

    energy, x0 = common.make_energy("torch", kind), common.make_points("torch", kind, n)

    def kernel():
        return LangevinKernel(potential_fn=lambda p: energy(p["x"]), step_size=STEP, adjust=True,
                              adapt_step_size=False, num_chains=n, rng=0)

    def under_mcmc(k):
        mcmc = MCMC(k, num_samples=num_steps, warmup_steps=0, initial_params={"x": x0}, disable_progbar=True)
        mcmc.run()
        return mcmc

    hmc = lambda: HMC(potential_fn=lambda p: energy(p["x"]).sum(), step_size=STEP, num_steps=1,  # noqa: E731
                      adapt_step_size=False)
    return {"ours_run_chains": lambda: run_chains(kernel(), num_steps, 0, initial_params={"x": x0}),
            "peer": lambda: under_mcmc(hmc())}


# ---------------------------------------------------------------------- NumPyro
def _kernel_driver(kernel, keys, x0, num_steps: int):
    """``chain_method="vectorized"`` without ``MCMC``: vmapped init, a scan of vmapped samples."""
    import jax

    state = jax.vmap(lambda k, x: kernel.init(k, 0, x, (), {}))(keys, x0)

    def body(s, _):
        s = jax.vmap(lambda c: kernel.sample(c, (), {}))(s)
        return s, s.z

    return jax.lax.scan(body, state, None, length=num_steps)[1]


def numpyro_fns(kind: str, n: int, num_steps: int) -> Dict[str, Callable[[], Any]]:
    import jax
    from numpyro.infer import BarkerMH

    from numpyro_vmt import LangevinKernel

    energy, x0 = common.make_energy("jax", kind), common.make_points("jax", kind, n)
    potential = lambda z: energy(z[None])[0]  # noqa: E731
    ours = LangevinKernel(potential_fn=potential, step_size=STEP, adjust=True, adapt_step_size=False)
    peer = BarkerMH(potential_fn=potential, step_size=STEP, adapt_step_size=False, adapt_mass_matrix=False)
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    drive_ours = jax.jit(partial(_kernel_driver, ours, num_steps=num_steps))
    drive_peer = jax.jit(partial(_kernel_driver, peer, num_steps=num_steps))
    return {"ours": lambda: common.block(drive_ours(keys, x0)),
            "peer": lambda: common.block(drive_peer(keys, x0))}


# ---------------------------------------------------------------------- all
PEERS = {
    "blackjax": ("jax", "numpyro_vmt.Langevin(adjust=True).run", "blackjax.mala (vmapped)", blackjax_pair),
    "torchebm": ("torch", "pyro_vmt.Langevin.run", "torchebm LangevinDynamics.sample", torchebm_pair),
    "pyro": ("torch", "pyro_vmt.LangevinKernel (MALA)", "pyro.infer.HMC(num_steps=1)", pyro_fns),
    "numpyro": ("jax", "numpyro_vmt.LangevinKernel (MALA)", "numpyro.infer.BarkerMH", numpyro_fns),
}
REQUIRES = {"blackjax": "blackjax", "torchebm": "torchebm", "pyro": "pyro", "numpyro": "numpyro"}


def run(args) -> List[Dict[str, Any]]:
    """One row per (peer, case, our variant); a peer that is not installed gets a ``skipped`` row."""
    cases = QUICK_CASES if args.quick else FULL_CASES
    min_time = 0.02 if args.quick else 0.2
    rows = []
    for name, (backend, ours_label, peer_label, build) in PEERS.items():
        if common.optional(REQUIRES[name]) is None:
            rows.append({"peer": name, "skipped": f"{REQUIRES[name]} is not installed"})
            continue
        for kind, n, k in cases:
            fns = build(kind, n, k)
            for variant, r in common.compare(fns, "peer", args.repeats, min_time).items():
                r.update(peer=name, backend=backend, ours=ours_label, peer_impl=peer_label, variant=variant,
                         energy=kind, chains=n, num_steps=k, speedup=round(1.0 / r["ratio"], 3))
                rows.append(r)
                print(f"peer {name:8s} {variant:15s} {kind:7s} n={n:5d} K={k:3d}: ours/peer "
                      f"{common.fmt_ratio(r)} (wall {r['ratio_wall']:.3f})", flush=True)
    return rows
