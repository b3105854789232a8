"""Dataset readers, synthetic scenes and label budgets."""
