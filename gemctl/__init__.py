"""Orchestration: recipes, DVC pipeline, launch, MLflow lineage and the CLI."""
