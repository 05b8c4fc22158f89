"""Writers for the real formats the readers take (used by the phantom cohort and the tests)."""
