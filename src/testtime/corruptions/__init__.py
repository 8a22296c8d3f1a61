"""testtime.corruptions"""
