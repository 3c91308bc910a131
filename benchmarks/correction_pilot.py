"""Pilot of exact MH teaching on one 2-D data set and seed (JAX unless "backend" is given).

    python benchmarks/correction_pilot.py grid25 10000 0 '{"correction": "mh", "path_anneal": true, "noise_fraction": 0.0}'

Trains the data set's recipe with the JSON changes, then prints the MH diagnostics
(path acceptance, weight ESS / n, crossing rate; means over tenths of training), the
KL of the EBM's mode masses (mixtures), the exact held-out log-likelihood and log Z by quadrature next to the path-weight estimate
of log Z (10,000 paths), and the modes and high-quality fraction of 5,000 samples
without (``mh_steps 0``: the proposals) and with 30 independence-sampler accept tests.
The logs of the runs reported in docs/benchmarks.md are in
``benchmarks/results/correction_pilot/``.
"""
import sys, time, json
import numpy as np
from vmt import load_backend
from vmt.data import load_dataset
from vmt.app.recipes import get_recipe, build_teacher
from vmt.evaluation.metrics import heldout_log_likelihood, mode_coverage, mode_mass_kl
import subprocess
print("git", subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip())
name, iters, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
opts = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
backend = load_backend(opts.pop("backend", "numpyro"))
ds = load_dataset(name, seed=seed)
rec = get_recipe(name).replace(num_iters=iters, **opts)
t = build_teacher(backend, ds, rec, seed=seed)
t0 = time.time()
h = t.fit(ds.train, rec.num_iters, rec.batch_size, progress=False)
el = time.time() - t0
k = max(1, iters // 10)
for f in ("path_acceptance", "weight_ess", "crossing_rate"):
    print(f, np.round([np.nanmean(h[f][i:i+k]) for i in range(0, iters, k)], 3))
q = heldout_log_likelihood(t.energy.numpy_energy, ds.test, ds.bounds)
lz, se = t.log_partition(10000, rng=0)
if ds.density.modes is not None:
    print("mode mass kl", mode_mass_kl(t.energy.numpy_energy, ds.density.modes, ds.bounds)["kl"])
print("quadrature loglik", q["log_likelihood"], "quad logZ", q["log_normalizer"], "best", -ds.density.entropy, "logZ est", lz, se, "time", el)
for mh in (0, 30):
    s = np.asarray(t.sample(5000, rng=1, mh_steps=mh))
    cov = mode_coverage(s, ds.density.modes, ds.density.mode_sd) if ds.density.modes is not None else {}
    print("mh_steps", mh, cov.get("modes_covered"), cov.get("high_quality_fraction"))
