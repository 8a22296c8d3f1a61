"""testtime.train"""
