"""(being written: the upernet decoder)"""
