"""``mask_rcnn``: Faster R-CNN with a mask branch (placeholder while it is written)."""
