"""Built-in policies, one package each; imported lazily by name through ``POLICY_REGISTRY``."""
