"""(being written: the dpt decoder)"""
