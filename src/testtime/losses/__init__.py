"""testtime.losses"""
