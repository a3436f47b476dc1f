from orchestrator.policies.registry import POLICY_FACTORIES, make_policy, policy_names

__all__ = ["POLICY_FACTORIES", "make_policy", "policy_names"]
