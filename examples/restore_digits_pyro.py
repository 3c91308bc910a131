"""A trained EBM as the prior of your own Pyro model: restoring half-masked digits.

1. Variational MCMC teaching trains an EBM ``E(x)`` and a VAE on the training
   digits (the digits recipe, shortened).
2. A user's Pyro model takes the EBM as its prior through a factor and observes only
   the top half of a test digit, with noise::

       x ~ p(x) ∝ exp(−E(x))           (energy.model(): flat site "x" + a factor)
       y ~ N(x_top, σ²)                (observed: the top four rows)

3. ``LangevinKernel`` (MALA, many chains in one process) samples the posterior of the
   whole image, warm-started from the VAE: each chain starts at one of the VAE's
   samples, those whose top half best matches ``y`` out of 64 per chain (passed as
   the plain-callable form of ``initial_params_from_guide``) — the amortised MCMC of
   the paper, used for a posterior it was never trained on.

Prints, per test digit, the error of the restored bottom half (posterior mean) next
to the VAE samples the chains started from and the mean training digit, the chains'
ArviZ diagnostics, and writes a picture: truth, observed half, restorations.

    python examples/restore_digits_pyro.py            # about 2 min on one CPU core
    python examples/restore_digits_pyro.py --quick    # seconds, for tests
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch

import pyro_vmt
from pyro_vmt import LangevinKernel, initial_params_from_guide
from pyro_vmt.chains import run_chains
from vmt.data import load_digits
from vmt.evaluation.diagnostics import min_ess, to_inference_data
from vmt.evaluation.plots import plot_digits
from vmt.app.recipes import build_teacher, get_recipe

TOP = 32  # the first four rows of an 8×8 image, flattened row by row


def restore_model(y_top, energy, sigma):
    """The user's model: the EBM as prior of the image, a noisy view of its top half."""
    x = energy.model()  # site "x" with the factor exp(−E(x))
    pyro.sample("y", dist.Normal(x[..., :TOP], sigma).to_event(1), obs=y_top)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=1500, help="VMT iterations")
    p.add_argument("--digits", type=int, default=6, help="test digits to restore")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--steps", type=int, default=400, help="MALA samples kept per chain (as many warm-up)")
    p.add_argument("--sigma", type=float, default=0.1, help="noise of the observed half")
    p.add_argument("--out", type=Path, default=Path("runs/example-restore"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.iters, args.digits, args.chains, args.steps = 20, 2, 4, 20
    torch.set_num_threads(1)  # small networks run fastest on one thread (see vmt train --threads)

    data = load_digits(seed=args.seed)
    recipe = get_recipe("digits").replace(num_iters=args.iters)
    teacher = build_teacher(pyro_vmt, data, recipe, seed=args.seed)
    start = time.perf_counter()
    teacher.fit(data.train, args.iters, recipe.batch_size, progress=False)
    print(f"VMT: {args.iters} iterations in {time.perf_counter() - start:.1f}s")
    energy = teacher.energy.requires_grad_(False)  # the posterior moves x only

    rows, mean_digit = [], data.train.mean(0)
    pictures = []
    for i in range(args.digits):
        truth = torch.as_tensor(data.test[i])
        y_top = truth[:TOP] + args.sigma * torch.randn(TOP, generator=torch.Generator().manual_seed(i))
        model_args = (y_top, energy, args.sigma)
        # warm start: of 64 VAE draws per chain, the ones whose top half best matches y
        proposals = teacher.sample(64 * args.chains, num_steps=0, rng=args.seed + i)
        fit = (proposals[:, :TOP] - y_top).pow(2).sum(1)
        vae_draws = iter(proposals[fit.argsort()[:args.chains]])
        init = initial_params_from_guide(lambda *_: {"x": next(vae_draws)}, restore_model, args.chains,
                                         rng=i, model_args=model_args)
        kernel = LangevinKernel(restore_model, step_size=0.01, num_chains=args.chains, rng=i)
        result = run_chains(kernel, args.steps, args.steps, initial_params=init, model_args=model_args)
        x = result.samples["x"]  # (chains, draws, 64)
        restored = x.mean((0, 1))
        bottom = slice(TOP, None)
        rmse = {name: float((v[bottom] - truth[bottom]).pow(2).mean().sqrt()) for name, v in
                [("posterior mean", restored), ("VAE starts (mean)", init["x"].mean(0)),
                 ("mean training digit", torch.as_tensor(mean_digit))]}
        idata = to_inference_data(*result)
        rows.append(rmse)
        print(f"digit {i} (label {data.test_labels[i]}): bottom-half RMSE " +
              ", ".join(f"{k} {v:.3f}" for k, v in rmse.items()) +
              f"; acceptance {float(result.sample_stats['acceptance_rate'].mean()):.2f}, "
              f"min bulk ESS {min_ess(idata):.0f} of {x.shape[0] * x.shape[1]} draws")
        observed = np.concatenate([y_top.numpy(), np.full(64 - TOP, -1.0)])
        pictures += [data.test[i], observed, restored.numpy(), x[0, -1].numpy()]
    means = {k: np.mean([r[k] for r in rows]) for k in rows[0]}
    print("mean bottom-half RMSE: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    plot_digits(np.stack(pictures), args.out / "restored.png", image_shape=(8, 8), nrow=args.digits,
                title="truth | top half seen | posterior mean | a draw")
    print(f"wrote {args.out / 'restored.png'}")


if __name__ == "__main__":
    main()
