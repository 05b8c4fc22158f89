"""Data: readers (raw files -> typed records), transforms, the phantom cohort, torch datasets."""
