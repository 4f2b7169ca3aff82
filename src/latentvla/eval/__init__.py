"""Evaluation: NAVSIM PDMS / EPDMS scoring (in progress), observations, motion simulation, comfort."""
