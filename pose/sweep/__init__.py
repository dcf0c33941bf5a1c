"""Sweeps: many training runs from one sweep file, submitted as a Slurm job array through
submitit (or run locally), watched, cancelled, and compared."""
