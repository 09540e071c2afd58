"""``clozelab report``: sweep aggregation (aggregate, jobs), statistics (stats), tables (write)
and plots (plots)."""
