"""The ODE engine, bottom up; each module imports only the ones listed before it.

``types`` (``Solution``, ``SolverStats``, ``SolverError``) → ``controller`` (step-size
controllers) → ``checks`` (validated tolerances, times, Runge–Kutta options) →
``packing`` (tuple states as one tensor, error norms) → ``integrator`` (the
Runge–Kutta loop) → ``methods`` (the method registry, ``ndode.scipy_solver``
one entry of it) → ``plan`` (one solve's settings, the ``Adjoint`` interface).
Above them: ``ndode.solver`` (``solve``), ``ndode.adjoint``,
``ndode.checkpoint_adjoint``, ``ndode.event``, and ``ndode.api`` with the
torchdiffeq-shaped ``odeint``, ``odeint_adjoint`` and ``odeint_event``.
"""
