"""Ray jobs and their wiring: the curation job, its stages, sink, plan, resume and dedup pass."""
