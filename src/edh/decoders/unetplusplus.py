"""(being written: the unetplusplus decoder)"""
