"""The model side: a readable GPT (gpt.py), memory-mapped token batches (data.py), pretraining with
exact resume (train.py) and held-out evaluation (evaluate.py). No Prefect here."""
