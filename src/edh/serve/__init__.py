"""``edh serve``: a prediction server for a trained run (FastAPI + uvicorn, dynamic batching)."""
