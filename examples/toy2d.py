"""Variational MCMC teaching on a 2-D density with a known log-density.

    python examples/toy2d.py --iters 2000          # grid25, torch backend, a short run
    python examples/toy2d.py --backend numpyro --data 8gaussians

Trains an EBM with a VAE as amortised sampler (the data set's recipe: exact
teaching), then reports the modes covered, the fraction of high-quality samples
(exact samples of the EBM), the EBM's exact held-out log-likelihood (by quadrature,
next to the true entropy) and writes two pictures. The recipes' full budgets take
minutes in JAX and longer in torch on a CPU (``docs/benchmarks.md`` has the times).
"""

import argparse
import time
from pathlib import Path

from vmt import load_backend
from vmt.data import DENSITIES, load_dataset
from vmt.evaluation.metrics import heldout_log_likelihood, mode_coverage
from vmt.evaluation.plots import plot_energy_2d, plot_samples_2d
from vmt.app.recipes import build_teacher, get_recipe
from vmt.app.scores import EVAL_MH_STEPS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["pyro", "numpyro"], default="pyro")
    p.add_argument("--data", choices=sorted(DENSITIES), default="grid25")
    p.add_argument("--iters", type=int, default=None, help="default: the recipe's")
    p.add_argument("--out", type=Path, default=Path("runs/example-toy2d"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    dataset = load_dataset(args.data, seed=args.seed)
    recipe = get_recipe(args.data)
    if args.iters is not None:
        recipe = recipe.replace(num_iters=args.iters)
    backend = load_backend(args.backend)
    teacher = build_teacher(backend, dataset, recipe, seed=args.seed)

    start = time.perf_counter()
    teacher.fit(dataset.train, recipe.num_iters, recipe.batch_size)
    print(f"{recipe.num_iters} iterations in {time.perf_counter() - start:.1f}s")

    density = dataset.density
    exact = {"mh_steps": EVAL_MH_STEPS} if recipe.config.correction else {}  # samples of exp(-E)/Z itself
    samples = backend.to_numpy(teacher.sample(5000, rng=args.seed, **exact))
    if density.modes is not None:
        cov = mode_coverage(samples, density.modes, density.mode_sd)
        print(f"modes covered {cov['modes_covered']}/{cov['num_modes']}, "
              f"high-quality samples {cov['high_quality_fraction']:.1%}")
    ll = heldout_log_likelihood(teacher.energy.numpy_energy, dataset.test, density.bounds)
    print(f"held-out log-likelihood {ll['log_likelihood']:.3f} nats "
          f"(best possible ≈ {-density.entropy:.3f})")
    plot_samples_2d(samples, dataset.test, args.out / "samples.png", bounds=density.bounds)
    plot_energy_2d(teacher.energy.numpy_energy, density.bounds, args.out / "energy.png")
    print(f"pictures in {args.out}")


if __name__ == "__main__":
    main()
