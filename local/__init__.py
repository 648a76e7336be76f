"""Recipe-side Python: data preparation, teacher training helpers, reports (run.sh calls these)."""
