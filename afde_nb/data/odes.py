"""Ground-truth regression data simulated from polynomial ODE models (method.md §7).

Each generator samples initial states (and parameters) uniformly from stated boxes, integrates
all samples at once with ``scipy.integrate.solve_ivp`` (one vectorised system), and returns the
state at a fixed time as the target. Deterministic given ``seed``.
"""
from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp


def _simulate(rhs, y0: np.ndarray, t_end: float) -> np.ndarray:
    """Integrate ``dy/dt = rhs(y)`` for a batch ``y0`` (n, d) to ``t_end``."""
    n, d = y0.shape
    sol = solve_ivp(lambda t, s: rhs(s.reshape(n, d)).ravel(), (0.0, t_end), y0.ravel(),
                    method="LSODA", rtol=1e-7, atol=1e-9, t_eval=[t_end])
    if not sol.success:
        raise RuntimeError(f"ODE integration failed: {sol.message}")
    return sol.y[:, -1].reshape(n, d)


def glycolysis(n: int = 3000, seed: int = 0, t_end: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Sel'kov's glycolytic oscillator (E. E. Sel'kov, "Self-oscillations in glycolysis",
    Eur. J. Biochem. 4 (1968) 79-86), in the dimensionless form of Strogatz, *Nonlinear Dynamics
    and Chaos*, §7.3:

        dx/dt = -x + a y + x^2 y,      dy/dt = b - a y - x^2 y.

    Inputs: x(0), y(0) in [0, 2], a in [0.05, 0.12], b in [0.4, 0.8]; targets: x, y at t_end."""
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, 2, size=(n, 2))
    a = rng.uniform(0.05, 0.12, size=n)
    b = rng.uniform(0.4, 0.8, size=n)

    def rhs(s):
        x, y = s[:, 0], s[:, 1]
        return np.stack([-x + a * y + x * x * y, b - a * y - x * x * y], axis=1)

    return np.column_stack([x0, a, b]), _simulate(rhs, x0, t_end)
