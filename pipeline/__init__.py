"""Stage logic as plain Python over Arrow tables. Nothing here imports Prefect."""
