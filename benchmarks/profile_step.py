"""Where a torch VMT iteration spends its time, next to the hand-written one (cProfile).

    python benchmarks/profile_step.py [--data grid25] [--iters 50]

Profiles ``teacher.step`` and :class:`handwritten_torch.HandwrittenVMT.step` (ELBO
hand-written, and by Pyro's ``Trace_ELBO``) on the same batch and prints, per
iteration, the cumulative time of the pieces that differ (the Langevin run, the
ELBO, the RNG fork, the optimiser steps, the checks), and ours minus the
hand-written one as a share of the hand-written iteration. The evidence behind the training-step section
of docs/benchmarks.md; profiler overhead inflates every entry alike.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

PIECES = {  # label -> (file suffix, function name)
    "Langevin run / revise (incl. energy and gradient)": [("langevin.py", "run"), ("handwritten_torch.py", "revise")],
    "ELBO (incl. Pyro tracing)": [("vae.py", "elbo_loss"), ("handwritten_torch.py", "_elbo_hand"),
                                  ("handwritten_torch.py", "_elbo_pyro")],
    "torch.manual_seed (RNG fork in elbo_loss)": [("random.py", "manual_seed")],
    "backward passes of the losses": [("_tensor.py", "backward")],
    "optimiser steps": [("optimizer.py", "wrapper")],
    "clip_grad_norm_": [("clip_grad.py", "clip_grad_norm_")],
    "finiteness checks": [("teaching.py", "_check_finite"), ("teaching.py", "_grad_norm")],
}


def profile(fns, iters: int, rounds: int = 10):
    """cProfile statistics of each function, interleaved: ``rounds`` rounds of ``iters / rounds`` calls each."""
    stats = {}
    for fn in fns.values():
        fn()
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(max(1, iters // rounds)):
                fns[name]()
            prof.disable()
            if name in stats:
                stats[name].add(prof)
            else:
                stats[name] = pstats.Stats(prof)
    return stats


def cumulative(stats: pstats.Stats, targets) -> float:
    total = 0.0
    for (file, _, name), (_, _, _, cum, _) in stats.stats.items():
        if any(file.endswith(f) and name == n for f, n in targets):
            total += cum
    return total


def main(argv=None) -> None:
    p = common.parser(__doc__.split("\n\n")[0], "profile.json")
    p.add_argument("--data", default="grid25")
    p.add_argument("--iters", type=int, default=50)
    args = p.parse_args(argv)
    common.setup(args)
    import speed_train

    fns = speed_train.torch_fns(args.data, args.quick)
    names = ("ours_step", "hand", "hand_pyro_elbo")
    stats = profile({name: fns[name] for name in names}, args.iters)
    args.iters = max(1, args.iters // 10) * 10
    total = {name: s.total_tt / args.iters * 1e3 for name, s in stats.items()}
    print("ms per iteration under cProfile: " + ", ".join(f"{n} {total[n]:.2f}" for n in names))
    print(f"{'piece':50s} {'ours':>7s} {'hand':>7s} {'hand+Pyro':>9s} {'(ours-hand)/hand':>17s}")
    for label, targets in PIECES.items():
        a, b, c = (cumulative(stats[n], targets) / args.iters * 1e3 for n in names)
        print(f"{label:50s} {a:7.2f} {b:7.2f} {c:9.2f} {(a - b) / total['hand']:17.1%}")

if __name__ == "__main__":
    main()
