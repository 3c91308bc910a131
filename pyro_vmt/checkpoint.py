"""Reading the torch backend's checkpoint files (written by ``VariationalMCMCTeaching.save``).

A ``torch.save`` payload read with ``weights_only=True``: format, version, backend,
the teacher's ``state_dict()`` and user metadata. Shared by the unconditional and
the conditional teacher.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from vmt.core.checkpoint import FORMAT
from vmt.core.errors import CheckpointError

__all__ = ["read_checkpoint"]


def read_checkpoint(path, device=None) -> Dict[str, Any]:
    """Read and check a checkpoint file written by [`pyro_vmt.VariationalMCMCTeaching.save()`][pyro_vmt.teaching.VariationalMCMCTeaching.save]."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a pyro-vmt checkpoint")
    if payload.get("backend") != "pyro":
        raise CheckpointError(f"{str(path)!r} was written by the {payload.get('backend')!r} backend, not 'pyro'")
    return payload
