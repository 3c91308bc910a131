"""Run in a subprocess (see test_torch_distributed.py): Torch teaching on 2 gloo ranks
(``torch.multiprocessing.spawn``) against one process fed the same random draws. Prints
one JSON object of measured differences and caught errors."""

import json
import math
import sys
import tempfile
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyro_vmt import (VAE, ConditionalEnergyModel, ConditionalVAE, ConditionalVariationalMCMCTeaching, EnergyModel,
                      VariationalMCMCTeaching)
from pyro_vmt.distributed import rank_seed
from pyro_vmt.nets import conditional_networks, default_networks
from pyro_vmt.update import energy_loss, revise, start_chains, vae_loss
from vmt.core.errors import DivergenceError

WORLD, SEED, ITERS = 2, 3, 3
OPTIONS = dict(step_size=0.05, num_steps=4, energy_lr=1e-2, vae_lr=1e-2, num_samples=32, grad_clip=1.0)
DATA = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
_X = torch.linspace(0, 1, 40)[:, None]
PAIRS = (_X, 2 * _X)  # 40 training pairs, 20 per rank


def teacher(mesh=None, rng=SEED, **extra):
    e_net, enc, dec = (m.double() for m in default_networks((2,), latent_dim=2, hidden=(16,)))
    options = dict(OPTIONS, **extra)
    vae = VAE(enc, dec, 2, (2,)) if options.get("init", "vae") == "vae" else None
    return VariationalMCMCTeaching(EnergyModel(e_net, (2,)), vae, rng=rng, mesh=mesh, **options)


def cond_teacher(mesh=None):
    e_net, enc, dec = conditional_networks((1,), (1,), latent_dim=1, hidden=(8,))
    return ConditionalVariationalMCMCTeaching(ConditionalEnergyModel(e_net, (1,), (1,)),
                                              ConditionalVAE(enc, dec, 1, (1,), (1,)), rng=SEED, mesh=mesh,
                                              step_size=0.05, num_steps=4, correction="mh", local_steps=2)


def flat(t):
    return torch.cat([p.detach().reshape(-1) for m in (t.energy, t.vae) if m is not None for p in m.parameters()])


def batches():
    return [DATA[16 * i:16 * (i + 1)] for i in range(ITERS)]


def caught(fn, kinds=(ValueError, TypeError, DivergenceError)):
    try:
        fn()
    except kinds as e:
        return f"{type(e).__name__}: {e}"
    return None


def rank_main(rank, tmp):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=WORLD)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("data",))
    out = {}
    t = teacher(mesh)
    for b in batches():
        info = t.step(b)
    out["loss"] = float(info.loss)
    torch.save(flat(t), f"{tmp}/params{rank}.pt")
    # a replay buffer, sharded over the ranks, saved whole by rank 0, continued
    p = teacher(mesh, init="persistent", buffer_size=64)
    for b in batches()[:2]:
        p.step(b)
    p.save(f"{tmp}/persistent.ckpt")
    p.step(batches()[2])
    torch.save(flat(p), f"{tmp}/persistent{rank}.pt")
    q = teacher(mesh, init="persistent", buffer_size=64)
    q.load(f"{tmp}/persistent.ckpt")
    q.step(batches()[2])
    out["resumed"] = float((torch.cat([flat(q), q.buffer.reshape(-1)]) -
                            torch.cat([flat(p), p.buffer.reshape(-1)])).abs().max())
    # exact (MH) teaching: each rank keeps its block of the chains; saved whole, continued
    mh_opts = dict(correction="mh", path_anneal=True, local_steps=2)
    m = teacher(mesh, **mh_opts)
    for b in batches()[:2]:
        m.step(b)
    m.save(f"{tmp}/mh.ckpt")
    info = m.step(batches()[2])
    out["mh_diagnostics"] = [float(info.path_acceptance), float(info.weight_ess), float(info.crossing_rate)]
    out["mh_chain_rows"] = int(m.chains.position.shape[0])
    torch.save(flat(m), f"{tmp}/mh{rank}.pt")
    mq = teacher(mesh, **mh_opts)
    mq.load(f"{tmp}/mh.ckpt")
    mq.step(batches()[2])
    out["mh_resumed"] = float(max((a - b).abs().max() for a, b in zip([flat(mq), *mq.chains], [flat(m), *m.chains])))
    # exact conditional teaching: rank r keeps the chains of its block of the 40 training rows
    c = cond_teacher(mesh)
    c.fit(PAIRS, num_iters=2, batch_size=8, progress=False)
    c.save(f"{tmp}/cmh.ckpt")
    info = c.fit(PAIRS, num_iters=1, batch_size=8, progress=False)
    out["cmh_acceptance"] = float(info["path_acceptance"][-1])
    out["cmh_chain_rows"] = int(c.chains.position.shape[0])
    torch.save(flat(c), f"{tmp}/cmh{rank}.pt")
    cq = cond_teacher(mesh)
    cq.load(f"{tmp}/cmh.ckpt")
    cq.fit(PAIRS, num_iters=1, batch_size=8, progress=False)
    out["cmh_resumed"] = float(max((a - b).abs().max() for a, b in zip([flat(cq), *cq.chains], [flat(c), *c.chains])))
    out["cmh_err_rows"] = caught(lambda: cond_teacher(mesh).fit(tuple(a[:39] for a in PAIRS), num_iters=1,
                                                                 batch_size=8, progress=False))
    # bad configurations: a batch that does not split, a mesh without "data", a generator
    out["err_batch"] = caught(lambda: t.step(DATA[:5]))
    out["err_fit"] = caught(lambda: t.fit(DATA, num_iters=1, batch_size=7, progress=False))
    out["err_axis"] = caught(lambda: teacher(init_device_mesh("cpu", (WORLD,), mesh_dim_names=("batch",))))
    out["err_rng"] = caught(lambda: teacher(mesh, rng=torch.Generator()))
    # a chain that diverges on rank 1 only stops both ranks, and no parameter moves
    before = flat(t).clone()
    if rank == 1:
        import pyro_vmt.teaching as teaching

        def diverged(*args, **kwargs):
            raise DivergenceError("Langevin diverged (test)")

        teaching.revise = diverged
    out["err_divergence"] = caught(lambda: t.step(batches()[0]))
    out["moved_after_divergence"] = float((flat(t) - before).abs().max())
    with open(f"{tmp}/out{rank}.json", "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()


def one_process_same_draws(**extra):
    """The global iteration on one device, with rank r's draws from rank r's generator:
    the global mean loss, whose gradient is the sum of the per-block gradients / W."""
    t = teacher(**extra)
    cfg = t.config
    gens = [torch.Generator().manual_seed(rank_seed(SEED, r)) for r in range(WORLD)]
    for b in batches():
        t.energy_optim.zero_grad(set_to_none=True)
        t.vae_optim.zero_grad(set_to_none=True)
        k, n = b.shape[0] // WORLD, cfg.num_samples // WORLD
        for r, g in enumerate(gens):
            starts = start_chains(cfg, t.energy, t.vae, None, n, g, True)
            x_tilde = revise(t.sampler, starts.position, g)[0].position
            loss = energy_loss(cfg, t.energy, b[r * k:(r + 1) * k], x_tilde)[0]
            ((loss + vae_loss(cfg, t.vae, x_tilde, starts, g)) / WORLD).backward()
        torch.nn.utils.clip_grad_norm_(t.energy.parameters(), cfg.grad_clip)
        t.energy_optim.step()
        t.vae_optim.step()
    return flat(t)


def main():
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(rank_main, args=(tmp,), nprocs=WORLD, join=True)
        outs = [json.load(open(f"{tmp}/out{r}.json")) for r in range(WORLD)]
        ranks = [torch.load(f"{tmp}/params{r}.pt") for r in range(WORLD)]
        persistent = [torch.load(f"{tmp}/persistent{r}.pt") for r in range(WORLD)]
        ckpt = torch.load(f"{tmp}/persistent.ckpt", weights_only=True)["state"]
        mh_ranks = [torch.load(f"{tmp}/mh{r}.pt") for r in range(WORLD)]
        mh_ckpt = torch.load(f"{tmp}/mh.ckpt", weights_only=True)["state"]
        # the 2-rank chains in one process: all 32 of them, and it trains on
        mh_single = teacher(correction="mh", path_anneal=True, local_steps=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mh_single.load(f"{tmp}/mh.ckpt")
        mh_single.step(batches()[2])
        cmh_ranks = [torch.load(f"{tmp}/cmh{r}.pt") for r in range(WORLD)]
        cmh_ckpt = torch.load(f"{tmp}/cmh.ckpt", weights_only=True)["state"]
        cmh_single = cond_teacher()  # one process takes all 40 chains and trains on
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cmh_single.load(f"{tmp}/cmh.ckpt")
        cmh_single.fit(PAIRS, num_iters=1, batch_size=8, progress=False)
        # the 2-rank checkpoint in one process: weights load, the buffer is whole, the RNG is reseeded
        single = teacher(init="persistent", buffer_size=64)
        with warnings.catch_warnings(record=True) as caught_warnings:
            warnings.simplefilter("always")
            single.load(f"{tmp}/persistent.ckpt")
    ref = one_process_same_draws()
    plain = teacher()
    for b in batches():
        plain.step(b)
    out = {
        "ranks_agree": float((ranks[0] - ranks[1]).abs().max()),
        "vs_one_device": float((ranks[0] - ref).abs().max() / ref.abs().max()),
        "plain_differs": float((ranks[0] - flat(plain)).abs().max()),
        "persistent_ranks_agree": float((persistent[0] - persistent[1]).abs().max()),
        "ckpt_buffer_rows": int(ckpt["buffer"].shape[0]),
        "ckpt_rank_rngs": len(ckpt["rank_rngs"]),
        "single_load_warning": next((str(w.message) for w in caught_warnings), None),
        "single_buffer_rows": int(single.buffer.shape[0]),
        "mh_ranks_agree": float((mh_ranks[0] - mh_ranks[1]).abs().max()),
        "mh_ckpt_chain_rows": int(mh_ckpt["chains"]["position"].shape[0]),
        "mh_single_chain_rows": int(mh_single.chains.position.shape[0]),
        "cmh_ranks_agree": float((cmh_ranks[0] - cmh_ranks[1]).abs().max()),
        "cmh_ckpt_chain_rows": int(cmh_ckpt["chains"]["position"].shape[0]),
        "cmh_single_chain_rows": int(cmh_single.chains.position.shape[0]),
        "loss_finite": all(math.isfinite(o["loss"]) for o in outs),
        "rank_outputs": outs,
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
