"""Exceptions shared by both backends, so callers catch the same types."""

__all__ = ["DivergenceError", "CheckpointError", "divergence_message"]


class DivergenceError(FloatingPointError):
    """A Langevin chain or a training loss became non-finite.

    Raised before any parameter or optimiser state is updated, so the model that
    raised it is left exactly as it was before the failing iteration.
    """


class CheckpointError(ValueError):
    """A checkpoint does not match the object it is loaded into, or is unreadable."""


def divergence_message(first_step: int, num_bad: int, num_chains: int, step_size: float) -> str:
    """The one wording both backends use for a diverged Langevin run."""
    return (
        f"Langevin diverged: {num_bad} of {num_chains} chains produced non-finite "
        f"values, first at step {first_step} (step_size={step_size:g}). Lower "
        "step_size, add an energy penalty (energy_reg) or a Gaussian reference "
        "term (ref_scale), or use adjust=True (MALA rejects such proposals)."
    )
