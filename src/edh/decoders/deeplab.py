"""(being written: the deeplab decoder)"""
