"""Exceptions shared by both backends, so callers catch the same types."""

__all__ = ["DivergenceError", "CheckpointError", "ArgumentTypeError", "divergence_message", "nonfinite_message", "parameters_message",
           "energy_dtype_message"]


class DivergenceError(FloatingPointError):
    """A Langevin chain or a training loss became non-finite.

    Raised before any parameter or optimiser state is updated, so the model that
    raised it is left exactly as it was before the failing iteration.
    """


class CheckpointError(ValueError):
    """A checkpoint does not match the object it is loaded into, is unreadable, or
    (on save) the state holds non-finite values.

    Raised before anything is changed: a load that fails leaves the object exactly as
    it was, a save that is refused writes nothing.
    """


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong kind (not an energy model, not a seed, an unknown option).

    A ``TypeError``, as Python raises for such arguments, and a ``ValueError``, the one
    type callers (and the command line) catch for every refused input.
    """


def energy_dtype_message(dtype: object) -> str:
    """The one wording both backends use when an energy network returns no floating-point values."""
    return (f"the energy network must return floating-point energies, got dtype "
            f"{str(dtype).replace('torch.', '')} (cast its output, e.g. to float32)")


def divergence_message(first_step: int, num_bad: int, num_chains: int, step_size: float) -> str:
    """The one wording both backends use for a diverged Langevin run."""
    return (
        f"Langevin diverged: {num_bad} of {num_chains} chains produced non-finite "
        f"values, first at step {first_step} (step_size={step_size:g}). Lower "
        "step_size, add an energy penalty (energy_reg) or a Gaussian reference "
        "term (ref_scale), or use adjust=True (MALA rejects such proposals)."
    )


def nonfinite_message(what: str, value: float) -> str:
    """The one wording both backends use for a non-finite loss or gradient norm."""
    return f"{what} is not finite ({value:g}); no parameter was updated"


def parameters_message(which: str, lr: float) -> str:
    """The one wording both backends use when an update made parameters non-finite."""
    return (f"the {which} parameters are not finite after the update ({which.split()[0].lower()}_lr={lr:g}); "
            "the update was undone: no parameter, optimiser state or RNG changed. Lower the learning rate "
            "or clip the gradient (grad_clip)")
