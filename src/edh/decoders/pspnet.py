"""(being written: the pspnet decoder)"""
