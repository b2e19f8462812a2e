"""(being written: the pan decoder)"""
