"""`lmtailor tune`: a validation-driven search over strategy and hyperparameters (docs/tuning.md)."""
