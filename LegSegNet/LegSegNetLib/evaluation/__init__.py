"""Evaluation of label maps against reference label maps (`legsegnet evaluate`, Slicer's "Compare with reference").

    metrics.py      per scan: Dice, IoU, surface distances (ASSD, HD95), volumes, mean HU, per-slice Dice
    statistics.py   cohort: mean, SD, median, bootstrap CI; Pearson r, ICC, Bland-Altman
    inputs.py       which prediction goes with which reference (one pair, pairs.csv, two folders)
    report.py       evaluation.csv, slices.csv, summary.json and the figures, written as one set
    run.py          the command: read, check, compare, summarise, write

metrics.py and statistics.py need only numpy and scipy (no SimpleITK, no files), so the Slicer logic uses
exactly the numbers the command line writes.
"""
