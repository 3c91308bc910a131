"""Speed of pyro-vmt: against the physical floor, the peers and a hand-written loop; scaling; memory.

    python benchmarks/speed.py                 # the full grid (~15-25 min on 2 busy cores)
    python benchmarks/speed.py --quick         # a tiny grid in seconds (CI)
    python benchmarks/speed.py --parts floor,peers
    python benchmarks/speed.py --parts train --merge   # rerun one part into the existing file

Every number is a ratio of two things timed side by side in this process,
interleaved over ``--repeats`` repeats (median of the per-repeat ratios, with its
quartiles), on process CPU time (wall-time ratios are recorded too). Writes
``benchmarks/results/speed.json`` (``--out``) and the scaling plot next to it.

Parts (see each module's docstring):

1. ``floor``   (:mod:`speed_floor`)   ``Langevin.run`` / K bare gradient evaluations.
2. ``peers``   (:mod:`speed_peers`)   BlackJAX, torchebm, Pyro's HMC, NumPyro's BarkerMH.
3. ``train``   (:mod:`speed_train`)   ``teacher.step`` / a hand-written iteration.
4. ``scaling`` (:mod:`speed_scaling`) time per iteration against K, batch, dimension;
   ``memory`` (:mod:`speed_memory`) working memory of a K-step run against K.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

PARTS = ("floor", "peers", "train", "scaling", "memory")
TARGETS = {"floor": "ratio <= 1.10 (both backends)", "peers": "ratio <= 1.00 against every peer",
           "train": "torch <= 1.25, jax <= 1.05 against the hand-written floor",
           "memory": "working memory at K=1000 within 10% of K=10"}


def main(argv=None) -> Path:
    p = common.parser(__doc__.split("\n\n")[0], "speed.json")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--merge", action="store_true",
                   help="replace only these parts in an existing --out file (its other parts are kept)")
    args = p.parse_args(argv)
    common.setup(args)
    parts = [s for s in args.parts.split(",") if s]
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")

    import speed_floor
    import speed_memory
    import speed_peers
    import speed_scaling
    import speed_train

    meta = common.meta(args, children=True)  # speed_memory measures in child processes
    payload = {"meta": meta, "targets": TARGETS, "step_size": speed_floor.STEP}
    if args.merge and args.out.exists():
        old = json.loads(args.out.read_text())
        payload = dict(old, merged=old.get("merged", []) + [{"parts": parts, "meta": meta}])
    modules = {"floor": speed_floor, "peers": speed_peers, "train": speed_train, "scaling": speed_scaling,
               "memory": speed_memory}
    for part in parts:
        payload[part] = modules[part].run(args)
    if "scaling" in parts:
        image = args.out.with_name(args.out.stem + "_scaling.png")
        payload["scaling"]["plot"] = str(speed_scaling.plot(payload["scaling"], image))
    return common.finish(payload, args.out, meta)


if __name__ == "__main__":
    main()
