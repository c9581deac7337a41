"""Measuring and reporting: the body-composition measurements from labels and HU (see docs/method.md)
and the output files of a run, written as one set. May import `core`, `scan` and `anatomy`."""
