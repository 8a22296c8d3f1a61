"""testtime.bench"""
