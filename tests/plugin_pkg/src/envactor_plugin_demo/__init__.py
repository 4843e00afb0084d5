"""envactor-plugin-demo: the ``demo_flow`` policy and its ``demo_velocity`` block."""
