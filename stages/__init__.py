"""Stage programs: data generation/ingestion and the four training stages. Plain functions of (config, paths, tracker)."""
