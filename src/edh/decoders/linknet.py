"""(being written: the linknet decoder)"""
