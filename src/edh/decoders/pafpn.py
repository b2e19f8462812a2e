"""``pafpn``: the YOLO PAN neck (placeholder while it is written)."""
