"""The BentoML service: classification with a distilled student, and compression jobs."""
