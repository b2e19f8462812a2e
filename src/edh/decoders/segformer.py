"""(being written: the segformer decoder)"""
