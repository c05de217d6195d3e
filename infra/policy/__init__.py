"""CrossGuard policy pack built from Liftoff's one rule set (`infra.policies.RULES`)."""
