"""Variational MCMC teaching on scikit-learn's 8×8 digits.

    python examples/digits.py                  # torch backend
    python examples/digits.py --backend numpyro

Reports the Fréchet distance and precision/recall of the EBM's samples and of the
VAE's own samples in the features of a small digit classifier, next to the floor
of held-out real digits, and writes a grid of samples.
"""

import argparse
import time
from pathlib import Path

from vmt import load_backend
from vmt.data import load_digits
from vmt.evaluation.metrics import DigitClassifier, digit_scores
from vmt.evaluation.plots import plot_digits
from vmt.app.recipes import build_teacher, get_recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["pyro", "numpyro"], default="pyro")
    p.add_argument("--iters", type=int, default=1500,
                   help="default 1500 (about 90 s on one CPU core); the recipe's, as vmt train runs it: 3000")
    p.add_argument("--out", type=Path, default=Path("runs/example-digits"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    dataset = load_digits(seed=args.seed)
    recipe = get_recipe("digits")
    recipe = recipe.replace(num_iters=args.iters)
    backend = load_backend(args.backend)
    if args.backend == "pyro":  # one thread: small networks run fastest so (see vmt train --threads)
        import torch

        torch.set_num_threads(1)
    teacher = build_teacher(backend, dataset, recipe, seed=args.seed)

    start = time.perf_counter()
    teacher.fit(dataset.train, recipe.num_iters, recipe.batch_size)
    print(f"{recipe.num_iters} iterations in {time.perf_counter() - start:.1f}s")

    classifier = DigitClassifier(seed=args.seed).fit(dataset.train, dataset.train_labels)
    n = len(dataset.train)
    for name, steps in [("EBM (VAE + Langevin)", None), ("VAE alone", 0)]:
        samples = backend.to_numpy(teacher.sample(n, num_steps=steps, rng=args.seed))
        s = digit_scores(samples, dataset, classifier)
        print(f"{name:22s} Fréchet {s['frechet']:.2f} (floor {s['frechet_floor']:.2f}), "
              f"precision {s['precision']:.2f}, recall {s['recall']:.2f}")
        if steps is None:
            plot_digits(samples[:100], args.out / "samples.png", image_shape=dataset.image_shape)
    print(f"samples in {args.out / 'samples.png'}")


if __name__ == "__main__":
    main()
