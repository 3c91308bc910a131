"""Supervised conditional learning on 8×8 digits: completion and class-conditional generation.

    python examples/conditional_digits.py                  # torch backend, < 2 min on a laptop CPU
    python examples/conditional_digits.py --backend numpyro

A conditional EBM E(y | x) is trained with a conditional VAE p(y | z, x), q(z | y, x)
as its amortised Langevin sampler (variational MCMC teaching, Xie, Zheng & Li, AAAI
2021), on two tasks built from scikit-learn's digits:

- completion: x = the top half of a digit, y = the bottom half. Ten completions per
  test input are scored by their best-of-10 and mean RMS error, their diversity and
  the accuracy of a digit classifier on the completed digits, next to the conditional
  VAE alone, a deterministic MLP regressor of the same size (scikit-learn's
  MLPRegressor, squared error) and the bottom halves of the ten training digits with
  the nearest top halves;
- class-conditional: x = the label (one-hot), y = the digit. Scored by the accuracy of
  the classifier on the generated digits (does it draw the digit asked for?) and the
  Fréchet distance per class, next to the conditional VAE alone and real digits.

Pictures go to --out (completion.png, class_vmt.png, class_vae.png).
"""

import argparse
from pathlib import Path

from vmt.app.tasks import run_task

KEYS = {"completion": ["best_of_k_rmse", "mean_rmse", "diversity", "accuracy"],
        "class": ["accuracy", "frechet", "frechet_floor"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["pyro", "numpyro"], default="pyro")
    p.add_argument("--iters", type=int, default=None, help="default: the recipes' (1500)")
    p.add_argument("--out", type=Path, default=Path("runs/example-conditional-digits"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for task in ("completion", "class"):
        result = run_task(task, args.backend, seed=args.seed, num_iters=args.iters, out=args.out)
        print(f"\n{task}: {result['recipe']['num_iters']} iterations in {result['train_seconds']:.1f}s "
              f"({args.backend}); evaluation {result['eval_seconds']:.1f}s")
        print(f"{'method':32s}" + "".join(f"{k:>16s}" for k in KEYS[task]))
        for name, row in result["rows"].items():
            print(f"{name:32s}" + "".join(f"{row[k]:16.3f}" for k in KEYS[task]))
    print(f"\npictures in {args.out}")


if __name__ == "__main__":
    main()
