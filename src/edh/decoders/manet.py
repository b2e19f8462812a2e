"""(being written: the manet decoder)"""
