"""Ground-truth regression data simulated from polynomial ODE models (method.md §7).

Each generator samples initial states (and parameters) uniformly from stated boxes, integrates
all samples at once with ``scipy.integrate.solve_ivp`` (one vectorised system), and returns the
state at a fixed time as the target. Deterministic given ``seed``.
"""
from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp


def _simulate(rhs, y0: np.ndarray, t_end: float, method: str = "LSODA") -> np.ndarray:
    """Integrate ``dy/dt = rhs(y)`` for a batch ``y0`` (n, d) to ``t_end``.

    The models below are non-stiff by choice of their parameter boxes and use the explicit
    ``DOP853``: an implicit method on the stacked (n*d)-dimensional system would build a dense
    (n*d)^2 Jacobian."""
    n, d = y0.shape
    sol = solve_ivp(lambda t, s: rhs(s.reshape(n, d)).ravel(), (0.0, t_end), y0.ravel(),
                    method=method, rtol=1e-7, atol=1e-9, t_eval=[t_end])
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


POLYMER_STATES = ("I", "R", "M", "lambda0", "lambda1", "lambda2", "mu0", "mu1", "mu2")
POLYMER_F, POLYMER_KI = 0.6, 1.0


def polymerization(n: int = 3000, seed: int = 0,
                   t_end: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Free-radical chain-growth polymerization with termination by combination, as a mass-action
    network (kinetic scheme of G. Odian, *Principles of Polymerization*, 4th ed., Wiley 2004,
    ch. 3), closed by the method of moments (W. H. Ray, "On the mathematical modeling of
    polymerization reactors", J. Macromol. Sci. C 8 (1972) 1-56):

        I -> 2 R (k_d, efficiency f),   R + M -> P_1 (k_i),   P_n + M -> P_{n+1} (k_p),
        P_n + P_m -> D_{n+m} (k_t).

    With living moments lambda_k = sum_n n^k P_n and dead moments mu_k = sum_n n^k D_n:

        dI/dt = -k_d I,                 dR/dt = 2 f k_d I - k_i R M,
        dM/dt = -k_i R M - k_p M lambda0,
        dlambda0/dt = k_i R M - k_t lambda0^2,
        dlambda1/dt = k_i R M + k_p M lambda0 - k_t lambda0 lambda1,
        dlambda2/dt = k_i R M + k_p M (2 lambda1 + lambda0) - k_t lambda0 lambda2,
        dmu0/dt = k_t lambda0^2 / 2,    dmu1/dt = k_t lambda0 lambda1,
        dmu2/dt = k_t (lambda0 lambda2 + lambda1^2).

    Monomer units are conserved: M + lambda1 + mu1 = M(0). Dimensionless, with f = 0.6 and
    k_i = 1 fixed and the rates kept O(1) so that the system is not stiff.

    Inputs: I(0) in [0.1, 1], M(0) in [1, 5], k_d in [0.1, 0.5], k_p in [1, 5], k_t in [1, 10]
    (every other state starts at 0); targets: the 9 states ``POLYMER_STATES`` at t_end."""
    rng = np.random.default_rng(seed)
    i0 = rng.uniform(0.1, 1.0, n)
    m0 = rng.uniform(1.0, 5.0, n)
    kd = rng.uniform(0.1, 0.5, n)
    kp = rng.uniform(1.0, 5.0, n)
    kt = rng.uniform(1.0, 10.0, n)
    f, ki = POLYMER_F, POLYMER_KI

    def rhs(s):
        i, r, m, l0, l1, l2, u0, u1, u2 = s.T
        init = ki * r * m
        return np.stack([-kd * i, 2 * f * kd * i - init, -init - kp * m * l0,
                         init - kt * l0 * l0,
                         init + kp * m * l0 - kt * l0 * l1,
                         init + kp * m * (2 * l1 + l0) - kt * l0 * l2,
                         0.5 * kt * l0 * l0, kt * l0 * l1, kt * (l0 * l2 + l1 * l1)], axis=1)

    y0 = np.zeros((n, len(POLYMER_STATES)))
    y0[:, 0], y0[:, 2] = i0, m0
    return np.column_stack([i0, m0, kd, kp, kt]), _simulate(rhs, y0, t_end, "DOP853")


# Component values of the ladder: section k has R_k and L_k in series, C_k to ground.
RLC_R = (0.2, 0.3, 0.4)
RLC_L = (1.0, 0.8, 0.6)
RLC_C = (0.5, 1.0, 1.5)


def rlc_ladder(n: int = 3000, seed: int = 0, t_end: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """A three-section RLC ladder driven by a constant source V_s and closed by a load R_load.
    Section k carries the inductor current i_k through R_k and L_k into node k, whose capacitor
    C_k to ground holds v_k (v_0 = V_s, i_4 = v_3 / R_load); Kirchhoff's laws give

        L_k di_k/dt = v_{k-1} - v_k - R_k i_k,        C_k dv_k/dt = i_k - i_{k+1},   k = 1, 2, 3,

    a linear system dx/dt = A(R_load) x + b V_s (the ladder network of e.g. C. K. Alexander and
    M. N. O. Sadiku, *Fundamentals of Electric Circuits*, ch. 8 "second-order circuits"), with
    ``RLC_R``, ``RLC_L``, ``RLC_C`` as above.

    Inputs: i_1..i_3(0) in [-1, 1], v_1..v_3(0) in [-1, 1], V_s in [0, 2], R_load in [0.5, 5];
    targets: (i_1, i_2, i_3, v_1, v_2, v_3) at t_end."""
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1.0, 1.0, (n, 6))
    vs = rng.uniform(0.0, 2.0, n)
    rl = rng.uniform(0.5, 5.0, n)
    (r1, r2, r3), (l1, l2, l3), (c1, c2, c3) = RLC_R, RLC_L, RLC_C

    def rhs(s):
        i1, i2, i3, v1, v2, v3 = s.T
        return np.stack([(vs - v1 - r1 * i1) / l1, (v1 - v2 - r2 * i2) / l2,
                         (v2 - v3 - r3 * i3) / l3,
                         (i1 - i2) / c1, (i2 - i3) / c2, (i3 - v3 / rl) / c3], axis=1)

    return np.column_stack([x0, vs, rl]), _simulate(rhs, x0, t_end, "DOP853")


RANDOM_NETWORK_SEED = 2024


def random_reaction_network(n_species: int = 5, n_uni: int = 4, n_bi: int = 6,
                            seed: int = RANDOM_NETWORK_SEED) -> list[tuple[tuple, tuple, float]]:
    """Reactions ``(reactants, products, k)`` of a random mass-action network over species
    0..n_species-1, drawn with ``np.random.default_rng(seed)``:

    - ``n_uni`` conversions X_a -> X_c (c != a),
    - ``n_bi`` bimolecular exchanges X_a + X_b -> X_c + X_d (a <= b may coincide, c <= d, and the
      product multiset differs from the reactant one),
    - every rate constant k uniform in [0.2, 1].

    Draws that repeat a reaction or leave a species never consumed or never produced are discarded
    and drawn again from the same stream, so the result is a fixed function of the arguments.
    Every reaction keeps the number of molecules, so sum_s x_s is conserved: the orthant is
    invariant under mass action and trajectories stay in the simplex they start in (bounded);
    rates O(1) keep it non-stiff."""
    rng = np.random.default_rng(seed)
    while True:
        net = []
        for _ in range(n_uni):
            a = int(rng.integers(n_species))
            c = int((a + rng.integers(1, n_species)) % n_species)
            net.append(((a,), (c,), float(rng.uniform(0.2, 1.0))))
        for _ in range(n_bi):
            reac = tuple(sorted(int(v) for v in rng.integers(n_species, size=2)))
            prod = reac
            while prod == reac:
                prod = tuple(sorted(int(v) for v in rng.integers(n_species, size=2)))
            net.append((reac, prod, float(rng.uniform(0.2, 1.0))))
        consumed = {s for r, p, _ in net for s in r if r.count(s) > p.count(s)}
        produced = {s for r, p, _ in net for s in p if p.count(s) > r.count(s)}
        distinct = len({(r, p) for r, p, _ in net}) == len(net)
        if distinct and len(consumed) == len(produced) == n_species:
            return net


def random_mass_action(n: int = 3000, seed: int = 0, t_end: float = 3.0,
                       network_seed: int = RANDOM_NETWORK_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The mass-action ODE of ``random_reaction_network(seed=network_seed)`` (5 species, 4
    unimolecular and 6 bimolecular reactions): for a reaction with reactants A (a multiset),
    products B and constant k, the rate is k prod_{s in A} x_s and

        dx/dt = sum_reactions k prod_{s in A} x_s (e_B - e_A),

    e_A the count vector of A (M. Feinberg, *Foundations of Chemical Reaction Network Theory*,
    Springer 2019). The network is fixed; only the initial state varies with ``seed``.

    Inputs: x_1..x_5(0) in [0, 1]; targets: x_1..x_5 at t_end."""
    net = random_reaction_network(seed=network_seed)
    n_sp = 5
    # A unimolecular reaction's second reactant is a constant-1 column (index n_sp).
    first = np.array([r[0] for r, _, _ in net])
    second = np.array([r[1] if len(r) == 2 else n_sp for r, _, _ in net])
    k = np.array([kk for _, _, kk in net])
    stoich = np.zeros((len(net), n_sp))
    for j, (r, p, _) in enumerate(net):
        np.add.at(stoich[j], list(p), 1.0)
        np.subtract.at(stoich[j], list(r), 1.0)

    def rhs(s):
        ext = np.column_stack([s, np.ones(len(s))])
        return (k * ext[:, first] * ext[:, second]) @ stoich

    x0 = np.random.default_rng(seed).uniform(0.0, 1.0, (n, n_sp))
    return x0.copy(), _simulate(rhs, x0, t_end, "DOP853")
