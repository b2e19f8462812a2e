"""``yolo``: the YOLOv8-style head (placeholder while it is written)."""
