"""``csp_darknet``: YOLOv8-style CSP-Darknet encoder (placeholder while it is written)."""
