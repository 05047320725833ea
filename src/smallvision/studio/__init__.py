"""The studio: one local page where a person looks at a folder of photos, trains on it with live curves and
follows the runs (`smallvision studio`). It serves only what lies under the roots it was given and its runs
folder (roots.py), trains one run at a time in a process of its own (trainer.py: a crash or an out-of-memory
ends the run, not the page), and draws each run's curves from the `live.jsonl` every training appends to
(callbacks.LiveLog), so a run started in a terminal shows as it goes too (runs.py)."""
