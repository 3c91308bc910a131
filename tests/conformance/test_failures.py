"""Failures change nothing, in both backends (issue 15, items 4-8).

- A diverged iteration (non-finite Langevin run, loss, gradient or *updated
  parameters*, or a non-finite batch) raises and leaves parameters, optimiser states,
  the training RNG and the iteration count exactly as they were.
- Nothing non-finite is saved: ``save`` refuses.
- A load that fails changes nothing and says why in one line: a file of the other
  backend, another format version, a truncated or altered file, non-finite weights,
  a bad iteration count or RNG state.
"""

import json
import zipfile

import numpy as np
import pytest

pyro_vmt = pytest.importorskip("pyro_vmt")
numpyro_vmt = pytest.importorskip("numpyro_vmt")

import torch  # noqa: E402

from vmt.core.errors import CheckpointError, DivergenceError  # noqa: E402

BACKENDS = {"pyro": pyro_vmt, "numpyro": numpyro_vmt}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    return BACKENDS[request.param]


def _mlp(B, i, o):
    return B.nets.MLP(i, o, (8,)) if B is pyro_vmt else B.nets.MLP(i, o, (8,), rng=0)


def teacher(B, ref_scale=None, **options):
    energy = B.EnergyModel(_mlp(B, 2, 1), (2,), ref_scale=ref_scale)
    vae = B.VAE(_mlp(B, 2, 4), _mlp(B, 2, 2), 2, (2,))
    options = {"step_size": 0.1, "num_steps": 2, **options}
    return B.VariationalMCMCTeaching(energy, vae, rng=0, **options)


def data(n=16):
    return np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)


def snapshot(t):
    """Every number the teacher's training depends on, as NumPy arrays (RNG and optimiser states included)."""
    if isinstance(t, pyro_vmt.VariationalMCMCTeaching):
        out = []

        def walk(v):
            if isinstance(v, dict):
                for k in v:
                    out.append(str(k))
                    walk(v[k])
            elif isinstance(v, (list, tuple)):
                for x in v:
                    walk(x)
            elif isinstance(v, torch.Tensor):
                out.append(v.detach().cpu().numpy().copy())
            else:
                out.append(v)

        walk(t.state_dict())
        return out
    import jax

    return [np.asarray(a).copy() for a in jax.tree.leaves(t.state)] + [t.iteration]


def same(a, b):
    return len(a) == len(b) and all(
        np.array_equal(x, y, equal_nan=True) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b))


# ------------------------------------------------------------------ diverged iterations
DIVERGE = {  # options, batch, expected error, message
    "updated energy parameters": (dict(energy_lr=1e39), data(), DivergenceError,
                                  "the energy parameters are not finite after the update"),
    "updated VAE parameters": (dict(vae_lr=1e39), data(), DivergenceError,
                               "the VAE parameters are not finite after the update"),
    # positions of about 1e35 after one step: their Gaussian reference energy overflows
    "Langevin run": (dict(step_size=1e18, ref_scale=1.0), data(), DivergenceError, "Langevin diverged"),
    "batch": ({}, np.array([[0.0, 1.0], [np.nan, 0.0]], np.float32), ValueError,
              r"batch has non-finite values in 1 rows \(first: row 1\)"),
}


@pytest.mark.parametrize("case", sorted(DIVERGE))
def test_a_failed_step_changes_nothing(backend, case):
    options, batch, error, match = DIVERGE[case]
    t = teacher(backend, **options)
    before = snapshot(t)
    with pytest.raises(error, match=match) as info:
        t.step(batch)
    assert "\n" not in str(info.value)
    assert same(snapshot(t), before) and t.iteration == 0


@pytest.mark.parametrize("case", ["updated energy parameters", "Langevin run"])
def test_a_failed_fit_iteration_changes_nothing(backend, case):
    options, _, error, match = DIVERGE[case]
    t = teacher(backend, **options)
    before = snapshot(t)
    with pytest.raises(error, match=match):
        t.fit(data(), num_iters=3, batch_size=8, progress=False)
    assert same(snapshot(t), before) and t.iteration == 0


def test_a_late_failure_restores_the_optimiser_state(backend):
    """Parameters grow by about lr per iteration until float32 overflows: the failing
    iteration must leave the optimiser's moments and step count as the previous one did."""
    t = teacher(backend, energy_lr=2e37)
    batch = data()
    for i in range(60):
        before = snapshot(t)
        try:
            t.step(batch)
        except (DivergenceError, ValueError):  # the parameters, or the energy at the start, overflow
            break
    else:
        pytest.fail("training with energy_lr=2e37 never diverged")
    assert i > 0 and t.iteration == i
    assert same(snapshot(t), before)
    assert all(np.isfinite(a).all() for a in before if isinstance(a, np.ndarray) and a.dtype.kind == "f")


def test_save_refuses_non_finite_state(backend, tmp_path):
    t = teacher(backend)
    t.fit(data(), num_iters=1, batch_size=8, progress=False)
    if backend is pyro_vmt:
        with torch.no_grad():
            next(t.energy.parameters()).view(-1)[0] = float("nan")
    else:
        import jax

        t.state = t.state._replace(energy=jax.tree.map(lambda a: a * np.nan, t.state.energy))
    with pytest.raises(CheckpointError, match="refusing to save: non-finite values in energy"):
        t.save(tmp_path / "ck")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ failed loads
def _rewrite(B, path, change):
    """Apply ``change(header_or_payload, arrays_or_state)`` to a saved file, keeping its format valid."""
    if B is pyro_vmt:
        from pyro_vmt.checkpoint import checksum

        payload = torch.load(path, weights_only=True)
        change(payload, payload["state"])
        payload["checksum"] = checksum({"state": payload["state"], "metadata": payload["metadata"]})
        torch.save(payload, path)
        return
    with np.load(path) as z:
        header = json.loads(str(z["header"][()]))
        arrays = {k: z[k] for k in z.files if k != "header"}
    change(header, arrays)
    with open(path, "wb") as f:
        np.savez(f, header=np.array(json.dumps(header)), **arrays)


def _first_weight(B, t):
    if B is pyro_vmt:
        return next(t.energy.parameters()).detach().numpy()
    import jax

    return np.asarray(jax.tree.leaves(t.state.energy)[0])


def _nan_weight(B):
    def change(head, state):
        if B is pyro_vmt:
            w = next(iter(state["energy"].values()))
            w.view(-1)[0] = float("nan")
        else:
            state["energy.0"] = state["energy.0"] * np.nan
    return change


def _bad_iteration(B):
    def change(head, state):
        if B is pyro_vmt:
            state["iteration"] = -3
        else:
            state["iteration.0"] = np.asarray(-3, np.int32)
    return change


def _bad_rng(B):
    def change(head, state):
        if B is pyro_vmt:
            state["rng"] = state["rng"][:10]
        else:
            state["rng.0"] = state["rng.0"][:1]
    return change


def _version(head, state):
    (head if "version" in head else state)["version"] = 99


LOADS = {  # how the file is damaged -> the error's message
    "other backend": (None, "was written by the '{other}' backend, not '{this}'"),
    "format version": (lambda B, p, t: _rewrite(B, p, _version), "has checkpoint format version 99"),
    "truncated": (lambda B, p, t: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]),
                  "cannot read checkpoint .*(truncated|not a complete)"),
    "flipped byte": (None, "(does not match its checksum|CRC)"),
    "not a checkpoint": (lambda B, p, t: p.write_bytes(b"not a checkpoint at all"), "cannot read checkpoint"),
    "NaN weights": (lambda B, p, t: _rewrite(B, p, _nan_weight(B)), "non-finite values in energy"),
    "iteration": (lambda B, p, t: _rewrite(B, p, _bad_iteration(B)), "no valid iteration count"),
    "RNG state": (lambda B, p, t: _rewrite(B, p, _bad_rng(B)), "(RNG|rng)"),
}


def _flip(B, path, t):
    raw = bytearray(path.read_bytes())
    w = _first_weight(B, t).tobytes()
    at = raw.find(w)
    assert at > 0, "the weight's bytes are stored as they are"
    raw[at + 5] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("case", sorted(LOADS))
def test_a_failed_load_changes_nothing_and_says_why(backend, case, tmp_path):
    damage, match = LOADS[case]
    other = numpyro_vmt if backend is pyro_vmt else pyro_vmt
    source = teacher(other if case == "other backend" else backend)
    source.fit(data(), num_iters=2, batch_size=8, progress=False)
    path = tmp_path / "ck"
    source.save(path)
    if case == "flipped byte":
        _flip(backend, path, source)
    elif damage is not None:
        damage(backend, path, source)
    t = teacher(backend, energy_lr=1e-3)
    t.fit(data(), num_iters=1, batch_size=8, progress=False)
    before = snapshot(t)
    names = {pyro_vmt: "pyro", numpyro_vmt: "numpyro"}
    with pytest.raises(CheckpointError, match=match.format(other=names[other], this=names[backend])) as info:
        t.load(path)
    assert "\n" not in str(info.value), str(info.value)
    assert same(snapshot(t), before)


def test_an_intact_checkpoint_still_loads_exactly(backend, tmp_path):
    t = teacher(backend)
    t.fit(data(), num_iters=2, batch_size=8, progress=False)
    t.save(tmp_path / "ck")
    u = teacher(backend)
    u.load(tmp_path / "ck")
    assert same(snapshot(u), snapshot(t))
    assert zipfile.is_zipfile(tmp_path / "ck")
