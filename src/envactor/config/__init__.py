"""Configuration: YAML files composed, overridden, interpolated and validated, with every error
naming the file, the dotted key path and the line.

A policy YAML::

    defaults: [../base.yaml, shared/obs.yaml]   # merged first, in order; this file on top
    model:
      component_config_paths:                   # name -> YAML file (relative to the file it is
        encoder: components/encoder.yaml        #   written in); each is a mapping with `type:`
      components:                               # or inline; a name in both is an error
        head:
          type: mlp
          dims: [256, 256]
          out_dim: ${policy.params.action_dim}  # inside {...} flow style, quote: "${...}"
    policy:
      type: flow_matching                       # a registered policy name (required)
      params: {horizon: 16, action_dim: 7}      # validated later by the policy class
    checkpoint: ../runs/flow/ckpt               # optional; relative to this file

Rules:

- Loading uses the safe loader only. Duplicate keys, a top level that is not a mapping and
  syntax errors are errors with file and line. ``1e-4`` is a float (plain PyYAML reads a str);
  ``dump_yaml`` writes YAML that reads back equal (it quotes the string ``"1e5"``).
- ``defaults:`` (top level, a list of files relative to the including file, recursive):
  mappings merge key by key, later wins; lists and scalars are replaced. A cycle is an error
  that prints it (``a.yaml -> b.yaml -> a.yaml``).
- Overrides ``KEY=VALUE`` (``policy.params.horizon=16``; the value is parsed as YAML) apply after
  composition; ``model.components.<name>.<param>=value`` reaches components loaded from files.
  A relative path given by an override is relative to the working directory.
- ``${a.b.c}`` refers to another key (a whole-string reference keeps the value's type),
  ``${env:NAME}`` / ``${env:NAME,default}`` to an environment variable, ``$${`` is a literal
  ``${``; resolved after overrides. Inside a component, ``${x}`` looks in that component first.
- Validation uses pydantic models with ``extra="forbid"``: unknown keys are errors. A boolean
  is not a number (``horizon: true`` is an error, not 1) and ``.inf`` / ``.nan`` (or an env
  value ``inf``) are never valid values.
- Files named by ``defaults:`` and ``component_config_paths`` must be ``.yaml`` / ``.yml`` files
  (after following symlinks) and may live anywhere (``../base.yaml`` is fine). An error about a
  file never quotes its content: it says what was expected, where, and which key named it.
- Hostile input is refused in milliseconds, with the limit and what was found: alias bombs
  (values are counted with aliases expanded before anything is built), deep nesting, files over
  256 KiB, ``defaults:`` diamonds, and ``${...}`` chains that grow exponentially. The limits
  (``envactor.config.limits``) are far above any real config.
"""

from envactor.config.compose import compose
from envactor.config.errors import OVERRIDE, ConfigError, Location
from envactor.config.loader import dump_yaml, load_yaml
from envactor.config.overrides import Override, apply_overrides, parse_override
from envactor.config.policy_config import PolicyConfig, load_policy_config, params_error
from envactor.config.tree import ComposedConfig
from envactor.config.validate import validate, validation_error

__all__ = [
    "OVERRIDE",
    "ComposedConfig",
    "ConfigError",
    "Location",
    "Override",
    "PolicyConfig",
    "apply_overrides",
    "compose",
    "dump_yaml",
    "load_policy_config",
    "load_yaml",
    "params_error",
    "parse_override",
    "validate",
    "validation_error",
]
