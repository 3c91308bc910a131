"""Argument checks: one dialect for every number the library takes.

Each check returns the value as a plain Python ``int`` or ``float`` or raises a
``ValueError`` that names the argument and shows what was given. Numbers come in
any of the forms users hold them in — Python numbers, NumPy scalars, 0-d NumPy,
torch or JAX arrays — since all of them implement ``__index__`` (integers) or
``__float__`` (reals); booleans are refused, and a count must be an integer
(``2.5`` is an error, never rounded).
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Optional, Tuple

__all__ = [
    "as_count", "as_real", "as_pair", "as_shape", "as_seed",
    "check_step_size", "check_num_steps", "check_noise_scale",
]


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_" or str(getattr(value, "dtype", "")) in (
        "bool", "torch.bool")


def as_count(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int`` ``≥ minimum`` (an integer of any array library), else ``ValueError``."""
    if not _is_bool(value) and not isinstance(value, float):
        try:
            number = operator.index(value)
        except TypeError:
            number = None
        if number is not None and number >= minimum:
            return int(number)
    what = {0: "a non-negative", 1: "a positive"}.get(minimum, f"an integer ≥ {minimum}, i.e. a")
    raise ValueError(f"{name} must be {what} integer, got {value!r}")


def as_real(name: str, value: Any, *, low: Optional[float] = None, high: Optional[float] = None,
            low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite ``float`` within the given bounds, else ``ValueError``.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``. Messages say
    "a positive finite number" for ``(0, ∞)`` and "a non-negative finite number" for
    ``[0, ∞)``, the bounds otherwise.
    """
    number = None
    if not _is_bool(value) and (isinstance(value, numbers.Real) or getattr(value, "shape", None) == ()):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
    ok = number is not None and math.isfinite(number)
    if ok and low is not None:
        ok = number > low if low_open else number >= low
    if ok and high is not None:
        ok = number < high if high_open else number <= high
    if ok:
        return number
    if low == 0 and high is None:
        what = "be a positive finite number" if low_open else "be a non-negative finite number"
    elif low is None and high is None:
        what = "be a finite number"
    else:
        what = (f"lie in {'(' if low_open else '['}{'-∞' if low is None else format(low, 'g')}, "
                f"{'∞' if high is None else format(high, 'g')}{')' if high_open or high is None else ']'}")
    raise ValueError(f"{name} must {what}, got {value!r}")


def as_pair(name: str, value: Any) -> Tuple[float, float]:
    """A pair of finite numbers as two floats, else ``ValueError``."""
    try:
        a, b = value
        return as_real(name, a), as_real(name, b)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of finite numbers, got {value!r}") from None


def as_shape(name: str, value: Any) -> Tuple[int, ...]:
    """A non-empty tuple of positive ints (an event shape), else ``ValueError``."""
    try:
        shape = tuple(as_count(name, v) for v in value)
    except (TypeError, ValueError):
        shape = ()
    if not shape:
        raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {value!r}")
    return shape


def as_seed(seed: Any, name: str = "seed") -> int:
    """A seed: a non-negative integer (``None`` is refused: no hidden entropy)."""
    try:
        return as_count(name, seed, minimum=0)
    except ValueError:
        raise ValueError(f"{name} must be a non-negative int{' seed' if name != 'seed' else ''}, got {seed!r}") \
            from None


def check_step_size(step_size: Any) -> float:
    """The Langevin step size ``δ > 0`` as a float."""
    return as_real("step_size", step_size, low=0, low_open=True)


def check_num_steps(num_steps: Any, allow_zero: bool = False) -> int:
    """The number of Langevin steps ``K`` (``≥ 1``, or ``≥ 0`` with ``allow_zero``)."""
    return as_count("num_steps", num_steps, minimum=0 if allow_zero else 1)


def check_noise_scale(noise_scale: Any, adjust: bool = False) -> float:
    """The Langevin noise scale ``σ ≥ 0``; a Metropolis-adjusted step needs ``σ > 0``."""
    value = as_real("noise_scale", noise_scale, low=0)
    if adjust and value == 0:
        raise ValueError("adjust=True (MALA) needs noise_scale > 0: a noise-free proposal has no density")
    return value


def host_numbers(batch: Any, name: str = "data"):
    """``batch`` as a NumPy array of floating-point numbers, else ``ValueError`` naming the problem.

    Ragged lists, strings, objects, integers, booleans and complex numbers are refused
    (nothing is cast silently); a float array is returned as it is, without a copy.
    """
    import numpy as np

    try:
        arr = np.asarray(batch)
    except (ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{name} cannot be read as an array of numbers ({first})") from None
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must hold floating-point numbers, got dtype {arr.dtype}")
    return arr


def check_batch_shape(name: str, shape: Tuple[int, ...], event: Tuple[int, ...]) -> None:
    """``ValueError`` unless ``shape`` is ``(n, *event)`` with ``n ≥ 1``."""
    shape, event = tuple(shape), tuple(event)
    if shape[1:] == event and len(shape) == len(event) + 1 and shape[0] == 0:
        raise ValueError(f"{name} has no rows (shape {shape})")
    if len(shape) != len(event) + 1 or shape[1:] != event:
        raise ValueError(f"{name} must have shape (n, {', '.join(map(str, event))}), got {shape}")


def overflow_message(name: str, dtype: Any) -> str:
    """The one wording both backends use for finite data that overflows the model's dtype."""
    dtype = str(dtype).replace("torch.", "")
    return (f"{name} has values too large for the model's dtype {dtype} (they overflow to infinity; "
            f"the largest {dtype} is about {'3.4e38' if dtype == 'float32' else 'its finfo.max'}): rescale the data")
