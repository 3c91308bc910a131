"""Sample quality on 8×8 digits: VMT against the VAE alone and the short-run EBM.

    python benchmarks/quality_digits.py                      # torch, the digits recipe
    python benchmarks/quality_digits.py --backends torch,jax --seeds 0,1
    python benchmarks/quality_digits.py --quick              # seconds (CI): 200 samples, tiny budget

Each method of :mod:`methods` (``vmt``, ``vae_only``, ``noise`` by default; same
recipe, same energy-gradient budget for the EBMs) draws as many samples as there
are training images (1437), scored by ``vmt.evaluation.metrics.digit_scores``: the Fréchet
distance and improved precision/recall in the hidden features of a small classifier
trained on the training split, next to the floor (held-out real digits). VMT's own
VAE (its decoder means, no Langevin) is the row ``vmt (VAE)``. Each EBM's held-out
log-likelihood is estimated from its own proposal paths (``est_loglik``, biased high),
each VAE's by its held-out ELBO (``vae_bound``, a lower bound). Writes
``benchmarks/results/quality_digits.json`` and a picture of 64 samples per method.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import methods  # noqa: E402

DEFAULT_METHODS = "vmt,vae_only,noise"


def _recipe(quick: bool):
    from vmt.app.recipes import get_recipe

    recipe = get_recipe("digits")
    return recipe.replace(num_iters=3, num_steps=2, batch_size=16) if quick else recipe


def main(argv=None) -> Path:
    p = common.parser(__doc__.split("\n\n")[0], "quality_digits.json")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--backends", default="torch", help="comma-separated subset of torch,jax")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"subset of {','.join(methods.METHODS)}")
    args = p.parse_args(argv)
    common.setup(args)

    from sklearn.exceptions import ConvergenceWarning

    from vmt.data import load_dataset
    from vmt.evaluation.metrics import DigitClassifier, digit_scores
    from vmt.evaluation.plots import plot_digits

    dataset, recipe = load_dataset("digits"), _recipe(args.quick)
    seeds = [int(s) for s in args.seeds.split(",")]
    backends = args.backends.split(",")
    which = args.methods.split(",")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier = DigitClassifier(seed=0, max_iter=30 if args.quick else 500).fit(
            dataset.train, dataset.train_labels)
    accuracy = classifier.accuracy(dataset.test, dataset.test_labels)
    n = 200 if args.quick else len(dataset.train)
    payload: Dict[str, Any] = {"meta": common.meta(args), "recipe": recipe.to_dict(), "seeds": seeds,
                               "backends": backends, "methods": which, "num_samples": n,
                               "classifier_test_accuracy": round(accuracy, 4), "rows": [], "figures": {}}
    figures = args.out.with_name(args.out.stem + "_figures")
    plot_digits(dataset.test[:64], figures / "data.png", title="held-out data")
    payload["figures"]["data"] = str(figures / "data.png")
    for backend in backends:
        for seed in seeds:
            for method in which:
                trained = methods.train(backend, method, dataset, recipe, seed)
                for label, vae_of_vmt in [(method, False)] + ([("vmt (VAE)", True)] if method == "vmt" else []):
                    row = dict(backend=backend, seed=seed, method=label, **methods.describe(trained))
                    try:
                        samples = methods.sample(trained, n, seed + 1000, vae_of_vmt)
                        row.update({k: round(v, 4) for k, v in digit_scores(samples, dataset, classifier).items()})
                        row.update(methods.vae_bound(trained, dataset.test, seed) if vae_of_vmt or method == "vae_only"
                                   else methods.estimated_loglik(trained, dataset.test, 500 if args.quick else 10_000))
                    except (FloatingPointError, ValueError) as e:  # diverged chains, non-finite samples
                        row["error"] = (row["error"] + "; " if row["error"] else "") + str(e).split(".")[0]
                        samples = None
                    payload["rows"].append(row)
                    if samples is not None and seed == seeds[0]:
                        name = f"{backend}_{label.replace(' ', '_').replace('(', '').replace(')', '')}"
                        plot_digits(samples[:64].clip(-1, 1), figures / f"{name}.png", title=f"{label} ({backend})")
                        payload["figures"][f"{backend}/{label}"] = str(figures / f"{name}.png")
                    print(f"digits {backend:5s} seed {seed} {label:10s}: frechet {row.get('frechet', '-')}, "
                          f"precision {row.get('precision', '-')}, recall {row.get('recall', '-')}, "
                          f"est. log-lik {row.get('est_loglik', '-')}, VAE bound {row.get('vae_bound', '-')}, "
                          f"{row['seconds']:.1f}s {row['error']}", flush=True)
    return common.finish(payload, args.out)


if __name__ == "__main__":
    main()
