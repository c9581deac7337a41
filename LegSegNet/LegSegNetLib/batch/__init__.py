"""`legsegnet batch`: segment and measure whole cohorts on Dask, resumably, one row per scan.

    inputs.py     find the scans: files, DICOM series in folder trees (headers only), a manifest CSV;
                  stable scan ids and a cheap content fingerprint per scan
    settings.py   the engine options of a batch, resolved once ("auto", model name -> folder) and hashed
    scan_task.py  what a Dask worker runs for one scan: the pipeline with a per-worker cached engine,
                  the QC flags, the result published atomically with status.json last
    qc.py         the QC flags of one scan (see the README for their definitions)
    results.py    per-scan folders and status.json, stale-work clean-up, cohort.csv's columns and rows
    cluster.py    a Dask client: embedded local cluster, an existing scheduler, or Slurm (dask-jobqueue)
    preload.py    what each local worker imports as it starts
    runner.py     the command: decide what to do, submit, report progress, rebuild cohort.csv, exit status
    options.py    the command line options

Dask is imported only by cluster.py and runner.py, so the rest works where Dask is not installed
(inside 3D Slicer the batch is never run).
"""
