"""The real-time controller: a policy driving a robot at a fixed rate (``envactor run``).

Modules: ``controller`` (the loop), ``robot``, ``clock``, ``chunks``, ``safety``, ``telemetry``,
``health`` and ``cli``; each loads on import, so the CLI starts without the rest.
"""
