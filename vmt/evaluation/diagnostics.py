"""ArviZ export of sampler runs and training histories (numpy + arviz only).

[`to_inference_data()`][vmt.evaluation.diagnostics.to_inference_data] turns what our samplers and trainers return into ArviZ
data, whichever ArviZ is installed:

- arviz 0.x (``InferenceData``): ``arviz.from_dict(posterior=..., sample_stats=...)``;
- arviz 1.x (``xarray.DataTree``): ``arviz.from_dict({"posterior": ..., "sample_stats": ...})``
  — a nested ``{group: {var: array}}`` as the first argument.

ESS, R-hat, MCSE and ``arviz.summary`` then work on the result. Arrays may be numpy,
torch (moved to the CPU and detached) or JAX; neither torch nor jax is imported here,
and arviz is imported only inside the functions.

Layout. Every array is ``(chains, draws, *shape)``; a 1-D array is one chain
(``(draws,)``, e.g. a training history from ``VariationalMCMCTeaching.fit``). Sampler
diagnostics given as a NamedTuple (a ``LangevinInfo`` stacked by ``Langevin.run``, or
any NamedTuple of arrays stacked over steps) are ``(draws, chains)`` and are
transposed. Names follow ArviZ's conventions: ``is_divergent`` becomes ``diverging``,
``accept_prob`` becomes ``acceptance_rate``, and a potential energy ``E = −log p̃``
(``energy`` / ``potential_energy``) becomes ``lp = −E`` (ArviZ's ``energy`` is the
Hamiltonian of HMC, which a Langevin chain does not have).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np

__all__ = ["to_inference_data", "min_ess", "arviz_major_version"]

#: our field name -> (ArviZ name, sign)
_RENAME = {
    "is_divergent": ("diverging", 1),
    "accept_prob": ("acceptance_rate", 1),
    "energy": ("lp", -1),
    "potential_energy": ("lp", -1),
}


def arviz_major_version(az: Any = None) -> int:
    """Major version of the installed (or given) arviz module."""
    if az is None:
        import arviz as az
    return int(str(az.__version__).split(".")[0])


def _to_numpy(x: Any) -> np.ndarray:
    try:
        return np.asarray(x)
    except (TypeError, RuntimeError) as e:  # e.g. a tensor on a GPU
        raise TypeError(f"cannot read {type(x).__name__} as a NumPy array ({e}); convert it first with the "
                        "backend's to_numpy") from e


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _chain_draw(name: str, value: Any, draws_first: bool) -> np.ndarray:
    a = _to_numpy(value)
    if a.ndim == 0:
        raise ValueError(f"{name!r} is a scalar; expected (chains, draws, ...) or (draws,)")
    if a.ndim == 1:
        return a[None]
    return np.swapaxes(a, 0, 1) if draws_first else a


def _group(values: Optional[Any], rename: bool, draws_first: bool) -> Dict[str, np.ndarray]:
    if values is None:
        return {}
    if _is_namedtuple(values):
        values, draws_first = values._asdict(), True
    if not isinstance(values, Mapping):
        raise TypeError(f"expected a dict of arrays or a NamedTuple, got {type(values).__name__}")
    out = {}
    for name, value in values.items():
        a = _chain_draw(name, value, draws_first)
        if rename and name in _RENAME:
            name, sign = _RENAME[name]
            a = a if sign == 1 else -a
        out[name] = a
    return out


def to_inference_data(samples: Any = None, sample_stats: Any = None, *, coords: Optional[dict] = None,
                      dims: Optional[dict] = None, var_name: str = "x", draws_first: bool = False) -> Any:
    """ArviZ data (``InferenceData`` on arviz 0.x, ``DataTree`` on 1.x) of a run.

    Parameters
    ----------
    samples : dict of arrays, array, or None
        The ``posterior`` group: ``{name: (chains, draws, *shape)}``; a single array
        is stored under ``var_name``; 1-D arrays are one chain (so the history dict of
        ``VariationalMCMCTeaching.fit`` can be passed directly).
    sample_stats : dict of arrays, NamedTuple, or None
        Per-draw diagnostics, ``(chains, draws)`` each (a NamedTuple such as
        ``LangevinInfo`` stacked over steps is ``(draws, chains)`` and is transposed),
        renamed to ArviZ's names (see the module docstring).
    coords, dims : dict, optional
        Passed to ``arviz.from_dict``.
    var_name : str
        Name of the variable when ``samples`` is a single array.
    draws_first : bool
        ``samples`` and dict ``sample_stats`` are ``(draws, chains, ...)`` instead.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree

    Examples
    --------
    >>> import numpy as np
    >>> idata = to_inference_data(np.random.default_rng(0).normal(size=(4, 100, 2)),
    ...                           {"is_divergent": np.zeros((4, 100), bool)})
    >>> sorted(idata.groups())[:2] if hasattr(idata, "groups") else None  # doctest: +SKIP
    ['posterior', 'sample_stats']
    """
    if samples is not None and not isinstance(samples, Mapping) and not _is_namedtuple(samples):
        samples = {var_name: samples}
    groups = {"posterior": _group(samples, rename=False, draws_first=draws_first),
              "sample_stats": _group(sample_stats, rename=True, draws_first=draws_first)}
    groups = {g: v for g, v in groups.items() if v}
    if not groups:
        raise ValueError("nothing to convert: give samples and/or sample_stats")
    shapes = {(g, n): a.shape[:2] for g, v in groups.items() for n, a in v.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"all arrays must share (chains, draws); got {shapes}")
    import arviz as az

    if arviz_major_version(az) >= 1:
        return az.from_dict(groups, coords=coords, dims=dims)
    return az.from_dict(**groups, coords=coords, dims=dims)


def min_ess(data: Any, method: str = "bulk") -> float:
    """The smallest ESS over all variables and coordinates of ``data``'s posterior.

    Works with arviz 0.x (``InferenceData``) and 1.x (``DataTree``).
    """
    import arviz as az

    result = az.ess(data, method=method)
    if hasattr(result, "children") and "posterior" in getattr(result, "children", {}):
        result = result["posterior"]
    result = getattr(result, "ds", result)
    values = [np.asarray(result[v]).min() for v in result.data_vars]
    if not values:
        raise ValueError("no variables to compute an ESS for")
    return float(min(values))
