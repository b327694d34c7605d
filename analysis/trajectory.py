"""Trajectory views: the zig and zag moves of latent paths in a 2-D projection.

Why: Z-Sampling's path is not monotone: each reflection steps forward with
g1 (zig, t_i -> t_{i+1}), back with g2 (zag, t_{i+1} -> t_i), then forward
again. Drawn in the plane of the two leading principal components of the
latents (or in the latent plane itself for 2-D models such as the analytic
Gaussian mixture), the zig and zag legs are visible and the net semantic
drift relative to the standard path for the same x_T is plain.

Input: :func:`analysis.run.trajectory_frame` (one row per run x sample x
event with the flattened output latent in columns ``z0 .. z{D-1}``; event
-1 is x_T). Output: the same rows with ``pc1``, ``pc2`` and, from
:func:`trajectory_segments`, one row per move with its start and end.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

LATENT_PREFIX = "z"
"""Prefix of the flattened latent columns of a trajectory frame."""


def latent_columns(frame: pd.DataFrame) -> list[str]:
    """The flattened-latent columns ``z0, z1, ...`` in order."""
    cols = [c for c in frame.columns if c.startswith(LATENT_PREFIX) and c[len(LATENT_PREFIX):].isdigit()]
    return sorted(cols, key=lambda c: int(c[len(LATENT_PREFIX):]))


def pca_project(frame: pd.DataFrame, columns: Sequence[str] | None = None, *,
                n_components: int = 2) -> pd.DataFrame:
    """Project rows on the leading principal components of ``columns``.

    The PCA is fit on all rows together (centred, SVD, components signed so
    that their largest loading is positive: deterministic). With exactly as
    many columns as components the coordinates are kept as they are (``pc1,
    pc2`` = the raw coordinates): a 2-D latent plane is already the view, and
    its own axes keep the model's geometry readable.

    Returns ``frame`` without the latent columns plus ``pc1 .. pc{n}``;
    ``attrs["explained_variance_ratio"]`` holds the ratios and
    ``attrs["projection"]`` is "identity" or "pca".
    """
    columns = list(columns) if columns is not None else latent_columns(frame)
    if not columns:
        raise ValueError("no latent columns (z0, z1, ...) to project")
    x = frame[columns].to_numpy(dtype=np.float64)
    rest = frame.drop(columns=columns).reset_index(drop=True)
    names = [f"pc{k + 1}" for k in range(n_components)]
    if len(columns) == n_components:
        projected, ratio, kind = x, np.var(x, axis=0) / max(np.var(x, axis=0).sum(), 1e-300), "identity"
    else:
        centred = x - x.mean(axis=0, keepdims=True)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        vt = vt[:n_components]
        signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
        vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
        projected = centred @ vt.T
        if projected.shape[1] < n_components:  # fewer dims than components
            projected = np.pad(projected, ((0, 0), (0, n_components - projected.shape[1])))
        var = s**2
        ratio = var[:n_components] / max(var.sum(), 1e-300)
        kind = "pca"
    out = pd.concat([rest, pd.DataFrame(projected, columns=names)], axis=1)
    out.attrs["explained_variance_ratio"] = [float(r) for r in ratio]
    out.attrs["projection"] = kind
    return out


def trajectory_segments(projected: pd.DataFrame, *, x: str = "pc1", y: str = "pc2") -> pd.DataFrame:
    """One row per move: the previous event's output to this event's output.

    Args:
        projected: :func:`pca_project`'s output (``run``, ``sample``,
            ``event``, ``op``, ``step``, ``round``, coordinates).

    Returns:
        ``run``, ``sample``, ``event``, ``op`` (zig | zag | step), ``step``,
        ``round``, ``x_start``, ``y_start``, ``x_end``, ``y_end``.
    """
    ids = [c for c in ("run", "sample") if c in projected.columns]
    rows = []
    for _, path in projected.sort_values([*ids, "event"]).groupby(ids, sort=True, observed=True):
        path = path.reset_index(drop=True)
        for k in range(1, len(path)):
            prev, cur = path.iloc[k - 1], path.iloc[k]
            rows.append({**{c: cur[c] for c in ids}, "event": int(cur["event"]), "op": str(cur["op"]),
                         "step": int(cur["step"]), "round": int(cur["round"]),
                         "x_start": float(prev[x]), "y_start": float(prev[y]),
                         "x_end": float(cur[x]), "y_end": float(cur[y])})
    return pd.DataFrame(rows, columns=[*ids, "event", "op", "step", "round", "x_start", "y_start", "x_end", "y_end"])
