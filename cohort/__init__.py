"""Many scans: resume, shards, summaries, and Dask for cohorts too big for one machine (``vbmd-rt run`` on
folders, ``--cluster``)."""
